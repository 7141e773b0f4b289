"""Memento attention masks for extend (prefill) forwards, built from token-id decisions.

A query at logical position t may not attend to a span whose eviction trigger is
strictly before t. During a prefill the spans are still in the row (compaction comes
after), so the mask hides them explicitly; spans already compacted out of the row
are simply absent (their columns do not exist). Pure torch, no SGLang.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from memento_sglang.tracker import Eviction


def extend_visibility(
    hidden: Iterable[Eviction],
    *,
    offset: int,
    prefix_len: int,
    extend_len: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """`[extend_len, prefix_len + extend_len]` bool mask (True = may attend), or None.

    Rows are the extend's queries, columns the row's physical slots; `offset` is
    logical minus physical for every slot and query involved (all compacted spans
    precede them). None when no query of this extend is affected (plain causal).
    """
    kv_len = prefix_len + extend_len
    first_query = offset + prefix_len  # logical position of the first extend query
    last_query = first_query + extend_len - 1
    affected = [ev for ev in hidden if ev.trigger < last_query and ev.end > ev.start]
    if not affected:
        return None
    rows = torch.arange(first_query, last_query + 1, device=device)
    # Spans are disjoint: each column is hidden after at most one trigger. One
    # broadcast comparison then builds the whole mask (no per-span [q, kv] passes).
    hidden_after = torch.full((kv_len,), last_query + 1, dtype=torch.long, device=device)
    for ev in affected:
        lo, hi = max(ev.start - offset, 0), min(ev.end - offset, kv_len)
        if lo < hi:
            hidden_after[lo:hi] = ev.trigger
    cols = torch.arange(kv_len, device=device) + offset
    return (cols[None, :] <= rows[:, None]) & (rows[:, None] <= hidden_after[None, :])
