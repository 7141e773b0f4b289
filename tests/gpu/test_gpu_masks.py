"""Memento masks on SGLang's GPU prefill kernels; skipped (never faked) without CUDA."""

from __future__ import annotations

import pytest
import torch

from memento_sglang.kernels.extend_masks import flat_extend_masks
from memento_sglang.kernels.segmented_attention import dense_reference
from memento_sglang.masks import ExtendSegment
from tests.support.triton_case import EXTEND_LENS, PLANS, PREFIX_LENS
from tests.support.triton_case import max_error as triton_max_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_triton_extend_kernel_on_cuda():
    assert triton_max_error("cuda") < 1e-5
    assert triton_max_error("cuda", mask_prefix=False) > 1e-2


def test_flashinfer_paged_prefill_with_flat_mask():
    """FlashInfer's paged prefill (what a masked batch is planned on) with our flat mask."""
    import flashinfer

    heads, kv_heads, dim, dev = 8, 4, 128, "cuda"
    gen = torch.Generator().manual_seed(0)
    kv_lens = [p + e for p, e in zip(PREFIX_LENS, EXTEND_LENS, strict=True)]
    pool = sum(kv_lens) + 8
    kv_cache = torch.randn(pool, 2, 1, kv_heads, dim, generator=gen).to(dev, torch.bfloat16)  # NHD, page 1
    slots = torch.randperm(pool, generator=gen)[: sum(kv_lens)].to(dev, torch.int32)
    q = torch.randn(sum(EXTEND_LENS), heads, dim, generator=gen).to(dev, torch.bfloat16)
    qo_indptr = torch.tensor([0, EXTEND_LENS[0], sum(EXTEND_LENS)], dtype=torch.int32, device=dev)
    kv_indptr = torch.tensor([0, kv_lens[0], sum(kv_lens)], dtype=torch.int32, device=dev)
    mask, _ = flat_extend_masks(PLANS, PREFIX_LENS, EXTEND_LENS, device=dev)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
        torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device=dev), "NHD"
    )
    wrapper.plan(
        qo_indptr, kv_indptr, slots, torch.ones(2, dtype=torch.int32, device=dev),
        heads, kv_heads, dim, 1, custom_mask=mask, q_data_type=torch.bfloat16,
    )  # fmt: skip
    out = wrapper.run(q, kv_cache)
    for i, (plan, p, e) in enumerate(zip(PLANS, PREFIX_LENS, EXTEND_LENS, strict=True)):
        rows = slice(int(qo_indptr[i]), int(qo_indptr[i + 1]))
        row_slots = slots[int(kv_indptr[i]) : int(kv_indptr[i + 1])].long()
        k = kv_cache[row_slots, 0, 0].movedim(0, 1).float().cpu()
        v = kv_cache[row_slots, 1, 0].movedim(0, 1).float().cpu()
        qi = q[rows].movedim(0, 1).float().cpu()
        want = dense_reference(qi, k, v, plan or [ExtendSegment(0, e, ())], prefix_len=p)
        torch.testing.assert_close(out[rows].movedim(0, 1).float().cpu(), want, atol=2e-2, rtol=2e-2)
