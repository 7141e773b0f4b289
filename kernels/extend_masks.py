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

import math
from collections.abc import Sequence

import torch

from memento_sglang.masks import ExtendSegment, segments_to_dense


def mask_entries(prefix_len: int, extend_len: int) -> int:
    """Entries of one request's mask: its new rows against prefix and new keys."""
    return extend_len * (prefix_len + extend_len)


def largest_chunk(prefix_len: int, entries: int) -> int:
    """The most new tokens whose mask rows after `prefix_len` cached ones fit `entries`."""
    if entries <= 0:
        return 0
    chunk = (math.isqrt(prefix_len * prefix_len + 4 * entries) - prefix_len) // 2
    while mask_entries(prefix_len, chunk + 1) <= entries:
        chunk += 1
    while chunk > 0 and mask_entries(prefix_len, chunk) > entries:
        chunk -= 1
    return chunk


#: FlashInfer's mask indptr and Triton's mask offsets are int32
MAX_MASK_ENTRIES = (1 << 31) - 1


def flat_extend_masks(
    plans: Sequence[list[ExtendSegment] | None],
    prefix_lens: Sequence[int],
    extend_lens: Sequence[int],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mask, indptr)`: the flat bool mask and each request's offset into it (int64)."""
    sizes = list(map(mask_entries, prefix_lens, extend_lens))
    if sum(sizes) > MAX_MASK_ENTRIES:
        raise ValueError(
            f"a masked prefill batch of {sum(sizes)} mask entries overflows the kernels' int32 "
            "offsets; the scheduler bounds it with prefill_mask_budget"
        )
    indptr = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    indptr[1:] = torch.tensor(sizes, dtype=torch.int64).cumsum(0)
    flat = torch.empty(int(indptr[-1]), dtype=torch.bool, device=device)
    for i, (plan, p, e) in enumerate(zip(plans, prefix_lens, extend_lens, strict=True)):
        rows = flat[int(indptr[i]) : int(indptr[i + 1])].view(e, p + e)
        segments_to_dense(plan or [], prefix_len=p, extend_len=e, device=device, out=rows)
    return flat, indptr.to(device)
