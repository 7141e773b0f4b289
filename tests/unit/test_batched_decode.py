"""One SDPA call for a decode batch equals SGLang's per-request loop."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.kernels.batched_decode import (
    MAX_GATHERED_ELEMENTS,
    batched_decode,
    fits,
    per_request_decode,
)


@settings(max_examples=60, deadline=None)
@given(
    lens=st.lists(st.integers(1, 40), min_size=1, max_size=9),
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 3]),
    seed=st.integers(0, 1000),
)
def test_batched_decode_equals_the_per_request_loop(lens, kv_heads, group, seed):
    gen = torch.Generator().manual_seed(seed)
    pool, dim, heads = 256, 8, kv_heads * group
    k_cache = torch.randn(pool, kv_heads, dim, generator=gen)
    v_cache = torch.randn(pool, kv_heads, dim, generator=gen)
    # rows hold their slots in any order; slots past a row's length are stale leftovers
    req_to_token = torch.randint(0, pool, (12, 64), generator=gen)
    req_pool_indices = torch.randperm(12, generator=gen)[: len(lens)]
    seq_lens = torch.tensor(lens)
    query = torch.randn(len(lens), heads, dim, generator=gen)
    args = (query, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens)
    want = per_request_decode(*args, scale=0.3, enable_gqa=group > 1)
    got = batched_decode(*args, scale=0.3, enable_gqa=group > 1)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_huge_batches_keep_sglangs_loop():
    k_cache = torch.zeros(4, 2, 8)
    assert fits(k_cache, torch.tensor([100] * 4))
    assert not fits(k_cache, torch.tensor([MAX_GATHERED_ELEMENTS // 16 + 1] * 2))
