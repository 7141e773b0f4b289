"""The segmented CPU masked-prefill attention equals masked SDPA with the dense mask."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.kernels.segmented_attention import dense_reference, segmented_attention
from memento_sglang.masks import extend_segments
from tests.support.synthetic import eviction_rows, evictions


@settings(max_examples=150, deadline=None)
@given(layout=eviction_rows(), group=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
def test_segmented_equals_dense_masked_sdpa(layout, group, seed):
    spans, kv_len, prefix = layout
    segments = extend_segments(spans, prefix_len=prefix, extend_len=kv_len - prefix)
    if segments is None:
        return
    gen = torch.Generator().manual_seed(seed)
    kv_heads, dim = 2, 8
    q = torch.randn(kv_heads * group, kv_len - prefix, dim, generator=gen)
    k = torch.randn(kv_heads, kv_len, dim, generator=gen)
    v = torch.randn(kv_heads, kv_len, dim, generator=gen)
    got = segmented_attention(q, k, v, segments, prefix_len=prefix, scale=0.3)
    want = dense_reference(q, k, v, segments, prefix_len=prefix, scale=0.3)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_hidden_columns_have_no_influence():
    """Changing the values of hidden columns changes nothing for the rows that hide them."""
    segments = extend_segments(evictions([(2, 6, 8)]), prefix_len=0, extend_len=14)
    q, k, v = torch.randn(4, 14, 8), torch.randn(2, 14, 8), torch.randn(2, 14, 8)
    before = segmented_attention(q, k, v, segments, prefix_len=0)
    k2, v2 = k.clone(), v.clone()
    k2[:, 2:6] += 5.0
    v2[:, 2:6] -= 3.0
    after = segmented_attention(q, k2, v2, segments, prefix_len=0)
    assert torch.equal(before[:, 9:], after[:, 9:])  # rows past the trigger
    assert not torch.allclose(before[:, 6:9], after[:, 6:9])  # rows up to it still see them
