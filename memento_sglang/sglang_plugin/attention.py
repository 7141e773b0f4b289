"""Masked prefill: which forward needs a Memento mask, and the torch_native path (CPU).

`forward.prepare_forward` stages a segment plan (`memento_sglang.masks`) for each
request of an extend batch that must not see some of its own columns, on the
runtime's `ForwardState` (read back here by request id).

On torch_native, a batch with any plan runs every request through the segmented
CPU flash path (`memento_sglang.kernels.segmented_attention`); batches without plans
take SGLang's own code unchanged. The GPU backends live in `gpu_attention.py`.
"""

from __future__ import annotations

from typing import Any

from memento_sglang.kernels.batched_decode import batched_decode, fits
from memento_sglang.kernels.segmented_attention import segmented_attention
from memento_sglang.masks import ExtendSegment
from memento_sglang.sglang_plugin import runtime
from memento_sglang.sglang_plugin.runtime import Plan

_ACTIVE = "_memento_active_plans"  # backend attribute during one forward_extend call


def with_batch_plans(original, backend, q, k, v, layer, forward_batch, *args, **kwargs):
    """AROUND torch_native `forward_extend`: expose this batch's plans to the SDPA loop."""
    setattr(backend, _ACTIVE, runtime.current().forward.plans_for(forward_batch.rids))
    try:
        return original(backend, q, k, v, layer, forward_batch, *args, **kwargs)
    finally:
        setattr(backend, _ACTIVE, None)


def masked_sdpa_extend(original, backend, query, output, k_cache, v_cache, req_to_token,
                       req_pool_indices, seq_lens, extend_prefix_lens, extend_seq_lens,
                       encoder_lens=None, *, scaling=None, causal=False, **kwargs):  # fmt: skip
    """AROUND `_run_sdpa_forward_extend`: the segmented path when plans are staged."""
    plans: list[Plan | None] | None = getattr(backend, _ACTIVE, None)
    plain = encoder_lens is not None or not causal or kwargs.get("is_cross_attn")
    if not plans or plain or (kwargs.get("sliding_window_size") or -1) > -1:
        return original(backend, query, output, k_cache, v_cache, req_to_token, req_pool_indices,
                        seq_lens, extend_prefix_lens, extend_seq_lens, encoder_lens,
                        scaling=scaling, causal=causal, **kwargs)  # fmt: skip
    heads_first = query.movedim(0, 1)  # [heads, tokens, dim]
    start = 0
    for i in range(seq_lens.shape[0]):
        q_len, kv_len = int(extend_seq_lens[i]), int(seq_lens[i])
        slots = req_to_token[req_pool_indices[i], :kv_len]
        q = heads_first[:, start : start + q_len]
        k = k_cache[slots].movedim(0, 1).to(q.dtype)
        v = v_cache[slots].movedim(0, 1).to(q.dtype)
        segments = plans[i] or [ExtendSegment(0, q_len, ())]  # plain causal
        result = segmented_attention(q, k, v, segments, prefix_len=kv_len - q_len, scale=scaling)
        output[start : start + q_len] = result.movedim(0, 1)
        start += q_len
    return output


def can_mask(attn_backend: Any) -> bool:
    """Whether this model runner's prefill backend applies Memento masks."""
    from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend
    from sglang.srt.layers.attention.hybrid_attn_backend import HybridAttnBackend
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    if isinstance(attn_backend, HybridAttnBackend):
        attn_backend = attn_backend.prefill_backend
    if type(attn_backend) is FlashInferAttnBackend:
        # sliding-window / cross-attention wrappers see other key ranges than the mask's
        return getattr(attn_backend, "dispatch_reason", None) is None
    return type(attn_backend) in (TorchNativeAttnBackend, TritonAttnBackend)


def batched_sdpa_decode(original, backend, query, output, k_cache, v_cache, req_to_token,
                        req_pool_indices, seq_lens, encoder_lens=None, scaling=None,
                        enable_gqa=False, causal=False, is_cross_attn=False,
                        sliding_window_size=None):  # fmt: skip
    """AROUND `TorchNativeAttnBackend._run_sdpa_forward_decode`: one SDPA call for the batch
    (`kernels.batched_decode`) instead of one per request; SGLang's loop for the cases it
    does not cover (encoder/cross attention, sliding windows, one request, a huge batch)."""
    simple = encoder_lens is None and not is_cross_attn and not causal and sliding_window_size is None
    one_query_each = query.shape[0] == seq_lens.shape[0] > 1
    if not (simple and one_query_each and fits(k_cache, seq_lens)):
        return original(
            backend, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, encoder_lens,
            scaling=scaling, enable_gqa=enable_gqa, causal=causal, is_cross_attn=is_cross_attn,
            sliding_window_size=sliding_window_size,
        )  # fmt: skip
    rows = (query, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens)
    output[:] = batched_decode(*rows, scale=scaling, enable_gqa=enable_gqa)
    return output
