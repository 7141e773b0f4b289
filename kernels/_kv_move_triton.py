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
def gather_rows(ptrs, row_bytes, src, scratch, n, widest, LOCS: tl.constexpr, BYTES: tl.constexpr):
    buffer = tl.program_id(0)
    locs = tl.program_id(1) * LOCS + tl.arange(0, LOCS)
    offsets = tl.program_id(2) * BYTES + tl.arange(0, BYTES)
    size = tl.load(row_bytes + buffer)
    base = tl.load(ptrs + buffer).to(tl.pointer_type(tl.uint8))
    mask = (locs < n)[:, None] & (offsets < size)[None, :]
    rows = tl.load(src + locs, mask=locs < n, other=0)
    values = tl.load(base + rows[:, None] * size + offsets[None, :], mask=mask)
    out = scratch + (buffer * n + locs)[:, None].to(tl.int64) * widest + offsets[None, :]
    tl.store(out, values, mask=mask)


@triton.jit
def scatter_rows(ptrs, row_bytes, dst, scratch, n, widest, LOCS: tl.constexpr, BYTES: tl.constexpr):
    buffer = tl.program_id(0)
    locs = tl.program_id(1) * LOCS + tl.arange(0, LOCS)
    offsets = tl.program_id(2) * BYTES + tl.arange(0, BYTES)
    size = tl.load(row_bytes + buffer)
    base = tl.load(ptrs + buffer).to(tl.pointer_type(tl.uint8))
    mask = (locs < n)[:, None] & (offsets < size)[None, :]
    rows = tl.load(dst + locs, mask=locs < n, other=0)
    held = scratch + (buffer * n + locs)[:, None].to(tl.int64) * widest + offsets[None, :]
    values = tl.load(held, mask=mask)
    tl.store(base + rows[:, None] * size + offsets[None, :], values, mask=mask)
