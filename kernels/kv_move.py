"""Simultaneous KV move over every layer of a pool: the copy of a paged compaction.

A paged compaction (`memento_sglang.paging`) moves the surviving tokens of the partial
pages at a span's edges. Sources and destinations overlap (tokens slide inside pages
they already occupy), so the move must read every source before it writes any
destination. SGLang's own `move_kv_cache` does not promise that on a GPU: its Triton
kernel has no barrier between a program's loads and stores, and it splits long moves
into chunks run one after another.

* `move_kv_reference`: plain torch, one gather and one scatter per buffer (advanced
  indexing gathers into a temporary first). The CPU path, and the oracle.
* `move_kv_triton`: all buffers in one launch per phase: gather every source row of
  every layer into a scratch tensor, then scatter it. Stream order is the barrier. A
  move larger than the scratch budget runs in chunks when the caller says the copies
  come in reader-before-writer order (`PagedCompaction.sequential_safe`), which makes
  chunks exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: bytes of scratch one chunk of a Triton move may take (all layers' K and V rows); it
#: lives outside SGLang's memory planning, so it stays small
SCRATCH_BUDGET_BYTES = 64 * 2**20


def move_kv_reference(buffers: Sequence[torch.Tensor], dst: torch.Tensor, src: torch.Tensor) -> None:
    """`buffer[dst] = buffer[src]` in every buffer, all sources read before any write."""
    _check_move(dst, src)
    if dst.numel() == 0:
        return
    for buffer in buffers:
        index_dst = dst.to(buffer.device, torch.int64)
        buffer[index_dst] = buffer[src.to(buffer.device, torch.int64)]


def _check_move(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape or dst.dim() != 1:
        raise ValueError(f"dst {tuple(dst.shape)} and src {tuple(src.shape)} must be equal 1-D")


def buffer_table(buffers: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Base address and row size in bytes of each buffer (dim 0 = slot), for the kernel."""
    for buffer in buffers:
        if not buffer.is_contiguous():
            raise ValueError("KV buffers must be contiguous")
    device = buffers[0].device
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64, device=device)
    row_bytes = torch.tensor([b[0].nbytes for b in buffers], dtype=torch.int64, device=device)
    return ptrs, row_bytes


def move_kv_triton(
    buffers: Sequence[torch.Tensor],
    dst: torch.Tensor,
    src: torch.Tensor,
    *,
    table: tuple[torch.Tensor, torch.Tensor] | None = None,
    scratch_budget_bytes: int = SCRATCH_BUDGET_BYTES,
    chunkable: bool = False,
) -> None:
    """`move_kv_reference` in two launches per chunk (gather, scatter) over all buffers.

    `table` is `buffer_table(buffers)`, cached by the caller. A move runs as one chunk
    unless `chunkable` says its copies come in reader-before-writer order; then chunks
    of at most `scratch_budget_bytes` of scratch run in order, which is exact.
    """
    _check_move(dst, src)
    n = dst.numel()
    if n == 0:
        return
    ptrs, row_bytes = table if table is not None else buffer_table(buffers)
    widest = max(b[0].nbytes for b in buffers)
    chunk = max(1, scratch_budget_bytes // (len(buffers) * widest)) if chunkable else n
    device = buffers[0].device
    dst, src = dst.to(device, torch.int64), src.to(device, torch.int64)
    for begin in range(0, n, chunk):
        end = min(n, begin + chunk)
        _move_chunk(ptrs, row_bytes, widest, len(buffers), dst[begin:end], src[begin:end])


_LOCS_PER_TILE = 16
_BYTES_PER_TILE = 512


def _move_chunk(
    ptrs: torch.Tensor, row_bytes: torch.Tensor, widest: int, count: int, dst: torch.Tensor, src: torch.Tensor
) -> None:
    from memento_sglang.kernels import _kv_move_triton as k

    n = dst.numel()
    scratch = torch.empty(count * n * widest, dtype=torch.uint8, device=dst.device)
    grid = (count, -(-n // _LOCS_PER_TILE), -(-widest // _BYTES_PER_TILE))
    meta = {"LOCS": _LOCS_PER_TILE, "BYTES": _BYTES_PER_TILE}
    k.gather_rows[grid](ptrs, row_bytes, src, scratch, n, widest, **meta)
    k.scatter_rows[grid](ptrs, row_bytes, dst, scratch, n, widest, **meta)
