"""GPU mask layouts: the flat builder vs the dense masks, and SGLang's Triton kernel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.kernels.extend_masks import flat_extend_masks, largest_chunk, mask_entries
from memento_sglang.masks import extend_visibility
from tests.support.synthetic import eviction_rows


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(eviction_rows(), min_size=1, max_size=4))
def test_flat_layout_is_each_dense_mask_row_major(batch):
    from memento_sglang.masks import extend_segments

    plans, prefixes, extends, dense = [], [], [], []
    for spans, kv_len, prefix in batch:
        extend = kv_len - prefix
        plans.append(extend_segments(spans, prefix_len=prefix, extend_len=extend))
        prefixes.append(prefix)
        extends.append(extend)
        mask = extend_visibility(spans, prefix_len=prefix, extend_len=extend)
        if mask is None:  # plain causal rows
            mask = torch.tril(torch.ones(kv_len, kv_len, dtype=torch.bool))[prefix:]
        dense.append(mask)
    flat, indptr = flat_extend_masks(plans, prefixes, extends)
    assert indptr.dtype == torch.int64 and int(indptr[-1]) == flat.numel()
    for i, mask in enumerate(dense):
        assert torch.equal(flat[int(indptr[i]) : int(indptr[i + 1])].view(mask.shape), mask)


def test_triton_extend_kernel_with_memento_mask_under_interpreter():
    """SGLang's own Triton extend kernel, our flat mask, CPU interpreter: equals masked SDPA.

    Also shows the prefix columns need the mask: SGLang's default skips it there.
    """
    repo_root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "tests.support.triton_case"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo_root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"max_abs_err=(\S+) without_prefix_mask=(\S+)", done.stdout)
    assert float(found.group(1)) < 1e-5
    assert float(found.group(2)) > 1e-2
    # A long masked prompt in chunks cut by a 200-entry mask budget: every chunk's flat
    # mask fits, the chunks shrink as the prefix grows, and the result is the whole prefill's.
    found = re.search(r"chunked_err=(\S+) chunks=(\S+) largest_mask=(\d+)", done.stdout)
    chunks = [int(c) for c in found.group(2).split(",")]
    assert float(found.group(1)) < 1e-5
    assert sum(chunks) == 40 and len(chunks) > 3 and chunks[0] > chunks[-1]
    assert int(found.group(3)) <= 200


@given(prefix=st.integers(0, 1 << 20), entries=st.integers(1, (1 << 31) - 1))
def test_largest_chunk_is_the_most_that_fits(prefix, entries):
    chunk = largest_chunk(prefix, entries)
    assert mask_entries(prefix, chunk) <= entries < mask_entries(prefix, chunk + 1)


def test_a_batch_mask_past_int32_is_refused_before_it_is_built():
    with pytest.raises(ValueError, match="int32"):
        flat_extend_masks([None], [1 << 20], [1 << 11])
