"""GPU-only checks; skipped (never faked) on machines without CUDA."""

from __future__ import annotations

import pytest
import torch

from memento_sglang.kernels.row_compaction import shift_row_left

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_row_compaction_on_cuda_matches_cpu():
    cpu = torch.randint(0, 10_000, (8, 4096), dtype=torch.int32)
    gpu = cpu.cuda()
    for row, (start, end, length) in enumerate([(0, 10, 100), (50, 900, 4000), (7, 7, 9)]):
        a = shift_row_left(cpu, row, start, end, length)
        b = shift_row_left(gpu, row, start, end, length)
        assert torch.equal(a, b.cpu())
    assert torch.equal(cpu, gpu.cpu())
