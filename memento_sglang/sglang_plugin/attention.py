"""Masked prefill on SGLang's torch_native attention backend (the CPU path).

SGLang's torch_native extend runs SDPA per request with `is_causal=True`. When the
forward being run has staged Memento masks (built in `scheduler.prepare_forward`),
the requests that have one run with an explicit boolean mask instead; the others
keep plain causal attention. Batches without masks take SGLang's own code unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.functional import scaled_dot_product_attention

_ACTIVE = "_memento_active_masks"  # backend attribute during one forward_extend call

# Masks for the forward being launched, by request id. SGLang's runners copy the
# ForwardBatch into static buffers (extra attributes do not survive), but
# `ForwardBatch.init_new` and that batch's forward run back to back in the
# scheduler thread, so the masks are staged at init_new and read by `rids`.
_staged: dict[str, torch.Tensor] = {}
# Float masks derived from the staged ones, per forward (see `_additive`).
_bias_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
_ROW_CHUNK = 512  # query rows per SDPA call in the masked path


def stage_masks(masks_by_rid: dict[str, torch.Tensor]) -> None:
    """Called for every forward batch (empty when none of its requests needs a mask)."""
    global _staged
    _staged = masks_by_rid
    _bias_cache.clear()


def with_batch_masks(original, backend, q, k, v, layer, forward_batch, *args, **kwargs):
    """AROUND `forward_extend`: expose this batch's masks to the SDPA loop below."""
    active = None
    if _staged:
        rids = forward_batch.rids or []
        active = {i: _staged[rid] for i, rid in enumerate(rids) if rid in _staged}
    setattr(backend, _ACTIVE, active)
    try:
        return original(backend, q, k, v, layer, forward_batch, *args, **kwargs)
    finally:
        setattr(backend, _ACTIVE, None)


def masked_sdpa_extend(original, backend, query, output, k_cache, v_cache, req_to_token,
                       req_pool_indices, seq_lens, extend_prefix_lens, extend_seq_lens,
                       *args, **kwargs):  # fmt: skip
    """AROUND `_run_sdpa_forward_extend`: per-request explicit masks when present."""
    masks: dict[int, torch.Tensor] | None = getattr(backend, _ACTIVE, None)
    if not masks or kwargs.get("is_cross_attn") or kwargs.get("sliding_window_size"):
        return original(backend, query, output, k_cache, v_cache, req_to_token, req_pool_indices,
                        seq_lens, extend_prefix_lens, extend_seq_lens, *args, **kwargs)  # fmt: skip
    heads_first = query.movedim(0, 1)  # [heads, tokens, dim]
    start = 0
    for i in range(seq_lens.shape[0]):
        q_len, kv_len = int(extend_seq_lens[i]), int(seq_lens[i])
        prefix = int(extend_prefix_lens[i])
        slots = req_to_token[req_pool_indices[i], :kv_len]
        q = heads_first[:, start : start + q_len]
        k = k_cache[slots].movedim(0, 1).to(q.dtype)
        v = v_cache[slots].movedim(0, 1).to(q.dtype)
        allow = masks.get(i)
        if allow is None:
            cols = torch.arange(kv_len, device=q.device)
            allow = cols[None, :] <= (prefix + torch.arange(q_len, device=q.device))[:, None]
        out = output[start : start + q_len].movedim(0, 1)  # [heads, q_len, dim] view
        _attend_in_row_chunks(q, k, v, _additive(allow, q.dtype), prefix, out, **kwargs)
        start += q_len
    return output


def _attend_in_row_chunks(q, k, v, bias, prefix, out, *, scaling=None, enable_gqa=False, **_):
    """Causal structure: row chunk [r0, r1) only needs keys [0, prefix + r1)."""
    for r0 in range(0, q.shape[1], _ROW_CHUNK):
        r1 = min(r0 + _ROW_CHUNK, q.shape[1])
        kv_hi = prefix + r1
        out[:, r0:r1] = scaled_dot_product_attention(
            q[None, :, r0:r1], k[None, :, :kv_hi], v[None, :, :kv_hi],
            attn_mask=bias[r0:r1, :kv_hi], scale=scaling, enable_gqa=enable_gqa,
        )[0]  # fmt: skip


def _additive(allow: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float mask (0 / -inf), built once per staged mask and reused by every layer.

    SDPA converts a boolean mask on every call; with one conversion per forward the
    per-layer cost is the attention alone.
    """
    cached = _bias_cache.get(id(allow))
    if cached is not None and cached[0] is allow and cached[1].dtype == dtype:
        return cached[1]
    bias = torch.zeros(allow.shape, dtype=dtype, device=allow.device).masked_fill_(~allow, float("-inf"))
    _bias_cache[id(allow)] = (allow, bias)  # emptied when the next forward stages its masks
    return bias


def can_mask(attn_backend: Any) -> bool:
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    return isinstance(attn_backend, TorchNativeAttnBackend)
