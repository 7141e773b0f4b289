"""Row compaction reference: exact index moves, bad spans rejected."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.kernels.row_compaction import shift_row_left


@settings(max_examples=200, deadline=None)
@given(data=st.data(), length=st.integers(0, 40))
def test_shift_matches_list_removal(data, length):
    start = data.draw(st.integers(0, length))
    end = data.draw(st.integers(start, length))
    table = torch.arange(3 * 48, dtype=torch.int32).reshape(3, 48)
    before = table.clone()
    row = list(table[1, :length].tolist())
    removed = shift_row_left(table, 1, start, end, length)
    assert removed.tolist() == row[start:end]
    kept = row[:start] + row[end:]
    assert table[1, : len(kept)].tolist() == kept
    assert torch.equal(table[0], before[0]) and torch.equal(table[2], before[2])
    assert torch.equal(table[1, length:], before[1, length:])  # beyond the row: untouched


def test_bad_span():
    table = torch.zeros(1, 8, dtype=torch.int32)
    for start, end, length in [(3, 2, 5), (0, 6, 5), (0, 1, 9)]:
        with pytest.raises(ValueError):
            shift_row_left(table, 0, start, end, length)
