"""Paged compaction's KV move on CUDA (`kernels.kv_move`); skipped (never faked) without CUDA.

On a GPU the warps of one Triton program have no barrier between loads and stores, so an
in-place move with overlapping sources and targets is only safe as two launches (gather
into scratch, then scatter). These cases overlap heavily and run long chains.
"""

from __future__ import annotations

import random

import pytest
import torch

from memento_sglang.kernels.kv_move import move_kv_reference, move_kv_triton
from memento_sglang.paging import plan_paged_compaction

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def pool(slots: int, layers: int = 4, dtype=torch.bfloat16) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(slots)
    buffers = [torch.randn(slots, 8, 128, device="cuda", generator=gen).to(dtype) for _ in range(2 * layers)]
    return buffers + [torch.randn(slots, 8, device="cuda", generator=gen)]  # a scale-like buffer


@pytest.mark.parametrize("n", [1, 100, 1000, 8000])
def test_triton_move_equals_gather_then_scatter(n):
    rng = random.Random(n)
    slots = 16384
    tgt = torch.tensor(rng.sample(range(1, slots), n), device="cuda")
    src = torch.tensor(rng.sample(range(1, slots), n), device="cuda")
    got, want = pool(slots), pool(slots)
    move_kv_reference(want, tgt, src)
    move_kv_triton(got, tgt, src)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_chained_shifts_inside_pages():
    """Every survivor slides by 3 inside its page (one long chain per page): the pattern of
    a 3-token memento span removed from a long row at page 16."""
    page, pages = 16, 512
    row = list(range(page, page * (pages + 1)))
    plan = plan_paged_compaction(row, len(row), [(5, 8)], page)
    assert plan.copied > 7000 and plan.sequential_safe
    got, want = pool(page * (pages + 2)), pool(page * (pages + 2))
    move_kv_reference(want, plan.copy_dst, plan.copy_src)
    move_kv_triton(got, plan.copy_dst.cuda(), plan.copy_src.cuda())
    budget = len(got) * 256 * got[0][0].nbytes  # chunks of 256 copies, in plan order
    chunked = pool(page * (pages + 2))
    dst, src = plan.copy_dst.cuda(), plan.copy_src.cuda()
    move_kv_triton(chunked, dst, src, scratch_budget_bytes=budget, chunkable=True)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(chunked, want, strict=True))


def test_fp8_buffers_move_bit_exactly():
    slots, n = 4096, 600
    rng = random.Random(1)
    tgt = torch.tensor(rng.sample(range(1, slots), n), device="cuda")
    src = torch.tensor(rng.sample(range(1, slots), n), device="cuda")
    got, want = pool(slots, dtype=torch.float8_e4m3fn), pool(slots, dtype=torch.float8_e4m3fn)
    move_kv_reference([b.view(torch.uint8) if b.element_size() == 1 else b for b in want], tgt, src)
    move_kv_triton(got, tgt, src)
    torch.cuda.synchronize()
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(got, want, strict=True))
