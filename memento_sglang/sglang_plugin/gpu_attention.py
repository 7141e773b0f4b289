"""Masked prefill on SGLang's GPU attention backends: FlashInfer and Triton.

Both take one flat boolean mask for the whole extend batch
(`memento_sglang.kernels.extend_masks`), built only when a request of the batch has a
staged plan (`ForwardState.plans_for`); other batches run SGLang's code untouched.

* FlashInfer: the ragged/paged split cannot mask the prefix part, so a masked batch
  is planned on the paged wrapper alone (as `SGLANG_FLASHINFER_USE_PAGED=1` does),
  and the mask goes in through the `custom_mask` SGLang's planner already forwards
  for cross-attention, which `update_single_wrapper` leaves empty.
* Triton: `custom_mask` / `mask_indptr` on the forward metadata, and the kernel told
  to apply the mask to the cached prefix too (SGLang's spec-decoding use skips it).
"""

from __future__ import annotations

from typing import Any

import torch

from memento_sglang.kernels.extend_masks import flat_extend_masks
from memento_sglang.sglang_plugin import runtime

_TRITON_ACTIVE = "_memento_mask_active"


def _batch_mask(forward_batch: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    mode = forward_batch.forward_mode
    if not mode.is_extend() or mode.is_target_verify():
        return None
    plans = runtime.current().forward.plans_for(forward_batch.rids)
    if plans is None:
        return None
    return flat_extend_masks(
        plans,
        forward_batch.extend_prefix_lens_cpu,
        forward_batch.extend_seq_lens_cpu,
        device=forward_batch.seq_lens.device,
    )


# ------------------------------------------------------------------ FlashInfer


def flashinfer_plan_with_mask(original, backend, forward_batch, *args, **kwargs):
    """AROUND `FlashInferAttnBackend.init_forward_metadata`: paged-only + mask."""
    built = _batch_mask(forward_batch)
    if built is None:
        return original(backend, forward_batch, *args, **kwargs)
    state = runtime.current().forward
    use_paged = backend.use_paged
    backend.use_paged, state.flashinfer_mask = True, built[0]
    try:
        return original(backend, forward_batch, *args, **kwargs)
    finally:
        backend.use_paged, state.flashinfer_mask = use_paged, None


def flashinfer_pass_mask(original, updater, *args, **kwargs):
    """AROUND `FlashInferIndicesUpdaterPrefill.call_begin_forward`: hand the mask over."""
    pending = runtime.current().forward.flashinfer_mask
    if pending is not None and kwargs.get("cross_attention_custom_mask") is None:
        kwargs["cross_attention_custom_mask"] = pending
    return original(updater, *args, **kwargs)


# ---------------------------------------------------------------------- Triton


def triton_metadata_with_mask(original, backend, forward_batch, *args, **kwargs):
    """AROUND `TritonAttnBackend.init_forward_metadata`: custom_mask + mask_indptr."""
    result = original(backend, forward_batch, *args, **kwargs)
    built = _batch_mask(forward_batch)
    setattr(backend, _TRITON_ACTIVE, built is not None)
    if built is not None:
        backend.forward_metadata.custom_mask, backend.forward_metadata.mask_indptr = built
    return result


def triton_mask_prefix_too(original, backend, layer, *args, **kwargs):
    """AROUND `TritonAttnBackend._forward_extend_kernel`: the mask covers prefix columns."""
    if getattr(backend, _TRITON_ACTIVE, False):
        kwargs["skip_prefix_custom_mask"] = False
    return original(backend, layer, *args, **kwargs)
