"""Memento extend masks in the flat layout of SGLang's GPU prefill kernels.

Triton's extend kernel (`custom_mask`, `mask_indptr`) and FlashInfer's paged prefill
(`custom_mask`, which FlashInfer bit-packs itself with `segment_packbits`) take one
flat boolean buffer: for each request, its `[extend_len, prefix_len + extend_len]`
mask in row-major order, back to back. A custom mask replaces causality for the
whole batch, so requests without a Memento plan get their plain causal rows.
Built on the batch's device from the segment plans (`memento_sglang.masks`); the
dense per-request mask there is the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from memento_sglang.masks import ExtendSegment, segments_to_dense


def flat_extend_masks(
    plans: Sequence[list[ExtendSegment] | None],
    prefix_lens: Sequence[int],
    extend_lens: Sequence[int],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mask, indptr)`: the flat bool mask and each request's offset into it (int64)."""
    sizes = [e * (p + e) for p, e in zip(prefix_lens, extend_lens, strict=True)]
    indptr = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    indptr[1:] = torch.tensor(sizes, dtype=torch.int64).cumsum(0)
    flat = torch.empty(int(indptr[-1]), dtype=torch.bool, device=device)
    for i, (plan, p, e) in enumerate(zip(plans, prefix_lens, extend_lens, strict=True)):
        rows = flat[int(indptr[i]) : int(indptr[i + 1])].view(e, p + e)
        segments_to_dense(plan or [], prefix_len=p, extend_len=e, device=device, out=rows)
    return flat, indptr.to(device)
