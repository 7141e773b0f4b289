"""Triton kernels of `kv_move.move_kv_triton` (imported lazily: `TRITON_INTERPRET` must be
set before Triton is first imported, and the CPU path never needs them).

Grid: (buffer, tile of locations, tile of bytes). Buffers are addressed through a table
of base pointers and row sizes, so every layer's K and V move in one launch; the
scratch holds `[buffer, location, widest row]` bytes.
"""

# ruff: noqa: N803 (Triton's constexpr parameters are upper case by convention)
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(ptrs, row_bytes, slots, n, widest, LOCS: tl.constexpr, BYTES: tl.constexpr):
    """This program's tile: pointers into its buffer at `slots`, byte offsets into the
    scratch, and the mask of both."""
    buffer = tl.program_id(0)
    locs = tl.program_id(1) * LOCS + tl.arange(0, LOCS)
    offsets = tl.program_id(2) * BYTES + tl.arange(0, BYTES)
    size = tl.load(row_bytes + buffer)
    base = tl.load(ptrs + buffer).to(tl.pointer_type(tl.uint8))
    mask = (locs < n)[:, None] & (offsets < size)[None, :]
    rows = tl.load(slots + locs, mask=locs < n, other=0)
    in_buffer = base + rows[:, None] * size + offsets[None, :]
    in_scratch = (buffer * n + locs)[:, None].to(tl.int64) * widest + offsets[None, :]
    return in_buffer, in_scratch, mask


@triton.jit
def gather_rows(ptrs, row_bytes, src, scratch, n, widest, LOCS: tl.constexpr, BYTES: tl.constexpr):
    in_buffer, in_scratch, mask = _tile(ptrs, row_bytes, src, n, widest, LOCS, BYTES)
    tl.store(scratch + in_scratch, tl.load(in_buffer, mask=mask), mask=mask)


@triton.jit
def scatter_rows(ptrs, row_bytes, dst, scratch, n, widest, LOCS: tl.constexpr, BYTES: tl.constexpr):
    in_buffer, in_scratch, mask = _tile(ptrs, row_bytes, dst, n, widest, LOCS, BYTES)
    tl.store(in_buffer, tl.load(scratch + in_scratch, mask=mask), mask=mask)
