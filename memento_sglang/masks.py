"""Memento attention masks for extend (prefill) forwards, built from token-id decisions.

A query at logical position t may not attend to a span whose eviction trigger is
strictly before t. During a prefill the spans are still in the row (compaction comes
after), so the mask hides them explicitly; spans already compacted out of the row
are simply absent (their columns do not exist). Pure torch, no SGLang.

The semantics live in one place, `extend_segments`: the extend's query rows split
at each trigger into segments, and every row of a segment hides the same column
ranges on top of causality. Kernels consume that plan directly (torch_native) or as
a dense boolean matrix (`extend_visibility`), which `memento_sglang.kernels` packs
into FlashInfer's and Triton's layouts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from memento_sglang.spans import EMPTY, SpanMap
from memento_sglang.tracker import Eviction


@dataclass(frozen=True, slots=True)
class ExtendSegment:
    """Query rows `[row_start, row_end)` of an extend (0 = its first query) see every
    physical column up to their own, except the `hidden` `[lo, hi)` ranges, which all
    lie before the segment's first query."""

    row_start: int
    row_end: int
    hidden: tuple[tuple[int, int], ...]


def extend_segments(
    hidden: Iterable[Eviction], *, compacted: SpanMap = EMPTY, prefix_len: int, extend_len: int
) -> list[ExtendSegment] | None:
    """The extend's rows as segments, or None when plain causal attention is exact.

    `compacted`: the spans already out of the row (none for a fresh prefill). They must
    all precede the `hidden` spans and the row's first `prefix_len` slots end after them,
    so every slot and query involved shifts by the same offset; a caller whose row was
    compacted must pass its map (the request's `MementoSequence.map`).
    """
    kv_len = prefix_len + extend_len
    first_query = compacted.to_logical(prefix_len)  # logical position of the first extend query
    last_query = first_query + extend_len - 1
    ranges: dict[int, list[tuple[int, int]]] = {}  # trigger -> physical ranges it hides
    for ev in hidden:
        lo, hi = compacted.to_physical(ev.start), min(compacted.to_physical(ev.end), kv_len)
        if ev.trigger < last_query and lo < hi:
            ranges.setdefault(ev.trigger, []).append((lo, hi))
    if not ranges:
        return None
    segments: list[ExtendSegment] = []
    active: list[tuple[int, int]] = []
    row = 0
    for trigger in sorted(ranges):
        boundary = max(trigger + 1 - first_query, 0)  # first row that no longer sees these
        if boundary > row:
            segments.append(ExtendSegment(row, boundary, tuple(sorted(active))))
            row = boundary
        active.extend(ranges[trigger])
    segments.append(ExtendSegment(row, extend_len, tuple(sorted(active))))
    return segments


def segments_to_dense(
    segments: list[ExtendSegment],
    *,
    prefix_len: int,
    extend_len: int,
    device: torch.device | str = "cpu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[extend_len, prefix_len + extend_len]` bool (True = may attend) for the segments,
    written into `out` when given (a view into a batch-wide buffer)."""
    kv_len = prefix_len + extend_len
    rows = torch.arange(extend_len, device=device)[:, None] + prefix_len
    mask = torch.le(torch.arange(kv_len, device=device)[None, :], rows, out=out)
    for seg in segments:
        for lo, hi in seg.hidden:
            mask[seg.row_start : seg.row_end, lo:hi] = False
    return mask


def extend_visibility(
    hidden: Iterable[Eviction],
    *,
    compacted: SpanMap = EMPTY,
    prefix_len: int,
    extend_len: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """Dense form of `extend_segments` (None when plain causal attention is exact)."""
    segments = extend_segments(hidden, compacted=compacted, prefix_len=prefix_len, extend_len=extend_len)
    if segments is None:
        return None
    return segments_to_dense(segments, prefix_len=prefix_len, extend_len=extend_len, device=device)
