"""Masked prefill attention on CPU without a dense mask (the torch_native path).

A Memento extend mask is causal minus a few column ranges that each hold for a run
of query rows (`memento_sglang.masks.ExtendSegment`). Per segment, attention is
split into the causal diagonal (the segment's own keys) and the visible past (every
earlier key outside the hidden ranges, gathered), each run by PyTorch's CPU flash
kernel without a mask, and merged exactly by their log-sum-exps. No `[q, kv]` mask
is ever read per head, and no query row computes keys it cannot see.

`dense_reference` is the plain masked SDPA this must equal.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention

from memento_sglang.masks import ExtendSegment, segments_to_dense

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def segmented_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segments: list[ExtendSegment],
    *,
    prefix_len: int,
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`q [heads, q_len, dim]` over `k, v [kv_heads, prefix_len + q_len, dim]` (GQA allowed)."""
    heads, q_len, dim = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    if out is None:
        out = q.new_empty(q.shape)
    for seg in segments:
        r0, r1 = seg.row_start, seg.row_end
        n, p0, p1 = r1 - r0, prefix_len + r0, prefix_len + r1
        qs = q[:, r0:r1]
        diag_k, diag_v = _expand(k[:, p0:p1], group), _expand(v[:, p0:p1], group)
        diag_out, diag_lse = _attend(qs, diag_k, diag_v, True, scale)
        pieces = _visible_past(p0, seg.hidden)
        if not pieces:
            out[:, r0:r1] = diag_out
            continue
        past_k = _gather(k, pieces)
        past_v = _gather(v, pieces)
        # GQA without copying keys: a kv head's query heads become extra query rows.
        folded = qs.reshape(kv_heads, group * n, dim)
        past_out, past_lse = _attend(folded, past_k, past_v, False, scale)
        past_out = past_out.reshape(heads, n, dim)
        past_lse = past_lse.reshape(heads, n)
        top = torch.maximum(diag_lse, past_lse)
        w_diag = torch.exp(diag_lse - top)[..., None]
        w_past = torch.exp(past_lse - top)[..., None]
        merged = (w_diag * diag_out.float() + w_past * past_out.float()) / (w_diag + w_past)
        out[:, r0:r1] = merged.to(out.dtype)
    return out


def dense_reference(q, k, v, segments, *, prefix_len: int, scale: float | None = None) -> torch.Tensor:
    """Plain SDPA with the dense boolean mask of the same segments."""
    mask = segments_to_dense(segments, prefix_len=prefix_len, extend_len=q.shape[1], device=q.device)
    return scaled_dot_product_attention(
        q[None], k[None], v[None], attn_mask=mask, scale=scale, enable_gqa=True
    )[0]


def _attend(q, k, v, causal: bool, scale):
    o, lse = _flash(q[None], k[None], v[None], 0.0, causal, scale=scale)[:2]
    return o[0], lse[0].float()


def _expand(x: torch.Tensor, group: int) -> torch.Tensor:
    return x if group == 1 else x.repeat_interleave(group, dim=0)


def _visible_past(end: int, hidden: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """`[0, end)` minus the (sorted, disjoint) hidden ranges, as ranges."""
    pieces, at = [], 0
    for lo, hi in hidden:
        if lo > at:
            pieces.append((at, min(lo, end)))
        at = max(at, hi)
    if at < end:
        pieces.append((at, end))
    return [(a, b) for a, b in pieces if a < b]


def _gather(x: torch.Tensor, pieces: list[tuple[int, int]]) -> torch.Tensor:
    if len(pieces) == 1:
        a, b = pieces[0]
        return x[:, a:b]
    return torch.cat([x[:, a:b] for a, b in pieces], dim=1)
