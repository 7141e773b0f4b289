"""Row compaction of a request's `req_to_token` row (torch reference).

Zero-copy eviction moves slot indices, never KV: the row's tail after an evicted
span shifts left over it. This is the reference every batched/GPU variant must
match bit for bit.
"""

from __future__ import annotations

import torch


def shift_row_left(table: torch.Tensor, row: int, start: int, end: int, length: int) -> torch.Tensor:
    """Remove `table[row, start:end]` from a row of `length` live entries.

    Returns the removed slot indices (a copy); entries `[start, length - (end - start))`
    hold the old `[start, ...)` minus the span afterwards. Overlapping ranges are
    handled by copying the tail first.
    """
    if not 0 <= start <= end <= length <= table.shape[1]:
        raise ValueError(f"bad span [{start}, {end}) for a row of length {length}")
    removed = table[row, start:end].clone()
    n = end - start
    if n:
        table[row, start : length - n] = table[row, end:length].clone()
    return removed
