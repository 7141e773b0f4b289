"""Scheduler side, compaction with paged KV (`--page-size` > 1): plan every row, then apply once.

With pages a row must stay page-consecutive, so a span whose length is not a multiple
of the page size moves the KV of the survivors after it (`memento_sglang.paging` plans
which). One compaction step applies the plans of all its rows together:

* one device-to-host read of the rows (the only sync; steps with no closing block pay
  nothing),
* one `index_put_` of the new rows into `req_to_token`,
* one simultaneous KV move over every layer (`kernels.kv_move`: Triton on CUDA, torch
  elsewhere),
* one `free_page_ids` of the pages the rows no longer use (never `free`, which would
  free the whole page of any slot given, including the partial pages a row keeps).

Pages the prefix tree owns are never written nor freed: with pages the Memento tree
owns nothing past the page of a block that may still leave
(`MementoSequence.insert_limit`), which this module checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memento_sglang.kernels.kv_move import buffer_table, move_kv_reference, move_kv_triton
from memento_sglang.paging import PagedCompaction, Span, plan_paged_compaction

#: the pool attributes that hold per-layer `[slot, ...]` buffers moved with the KV
_BUFFER_LISTS = ("k_buffer", "v_buffer", "k_scale_buffer", "v_scale_buffer", "kv_buffer")


@dataclass(frozen=True, slots=True)
class PagedRow:
    """One row to compact: its `req_to_token` index, live length, tree-owned prefix and
    the spans (row positions before this step's removals) that leave it."""

    pool_index: int
    length: int
    protected: int
    spans: tuple[Span, ...]


def compact_paged_rows(
    rows: Sequence[PagedRow], req_to_token: torch.Tensor, allocator: Any
) -> list[PagedCompaction]:
    """Remove every row's spans in one step; returns the plans (in `rows` order)."""
    page_size = int(allocator.page_size)
    if not rows:
        return []
    for row in rows:
        _check_tree_pages_untouched(row, page_size)
    width = max(row.length for row in rows)
    index = torch.tensor([row.pool_index for row in rows], dtype=torch.int64)
    host = req_to_token[index.to(req_to_token.device), :width].to("cpu", torch.int64)  # one sync
    plans = [plan_paged_compaction(host[i], row.length, row.spans, page_size) for i, row in enumerate(rows)]
    _write_rows(req_to_token, rows, plans)
    _move_kv(allocator.get_kvcache(), plans)
    freed = [plan.freed_pages for plan in plans if plan.freed_pages.numel()]
    if freed:
        allocator.free_page_ids(torch.cat(freed).to(allocator.device))
    return plans


def tree_holds_span_page(protected: int, span_start: int, page_size: int) -> bool:
    """Whether the prefix tree (owning the row's first `protected` slots) holds the page
    where a span starts: such a row cannot be compacted (the tree's pages are shared)."""
    return protected > span_start // page_size * page_size


def _check_tree_pages_untouched(row: PagedRow, page_size: int) -> None:
    if tree_holds_span_page(row.protected, row.spans[0][0], page_size):
        raise RuntimeError(
            f"paged compaction: the prefix tree owns {row.protected} slots of a row whose span "
            f"starts at {row.spans[0][0]}; the tree's pages must end before the page of any "
            "block that may leave"
        )


def _write_rows(
    req_to_token: torch.Tensor, rows: Sequence[PagedRow], plans: Sequence[PagedCompaction]
) -> None:
    """All rows' changed entries in one `index_put_`."""
    row_ids, columns, values = [], [], []
    for row, plan in zip(rows, plans, strict=True):
        tail = plan.new_row[plan.unchanged :]
        row_ids.append(torch.full_like(tail, row.pool_index))
        columns.append(torch.arange(plan.unchanged, plan.unchanged + tail.numel(), dtype=torch.int64))
        values.append(tail)
    device = req_to_token.device
    req_to_token.index_put_(
        (torch.cat(row_ids).to(device), torch.cat(columns).to(device)),
        torch.cat(values).to(device, req_to_token.dtype),
    )


def _move_kv(kv_pool: Any, plans: Sequence[PagedCompaction]) -> None:
    """Every plan's copies as one move (rows never share pages, and each plan's copies
    are in reader-before-writer order, so their concatenation is too)."""
    moving = [plan for plan in plans if plan.copied]
    if not moving:
        return
    src = torch.cat([plan.copy_src for plan in moving])
    dst = torch.cat([plan.copy_dst for plan in moving])
    buffers = _slot_buffers(kv_pool)  # the pool passed `pool_unsupported_reason` at startup
    if buffers[0].is_cuda:
        # The forward in flight (overlap scheduling) reads the block's KV and writes the
        # newest token's, which may be a survivor to move: wait for it on copy steps only.
        torch.cuda.synchronize(buffers[0].device)
        chunkable = all(plan.sequential_safe for plan in moving)
        move_kv_triton(buffers, dst, src, table=_table(buffers), chunkable=chunkable)
    else:
        move_kv_reference(buffers, dst, src)


def kv_buffers(kv_pool: Any) -> list[torch.Tensor]:
    """Every per-layer buffer indexed by KV slot (K, V, their scales, or MLA's joint KV);
    raises for a pool paged compaction cannot move (see `pool_unsupported_reason`)."""
    if (reason := _pool_reason(kv_pool)) is not None:
        raise RuntimeError(f"paged compaction: {reason}")
    return _slot_buffers(kv_pool)


def pool_unsupported_reason(allocator: Any) -> str | None:
    """Why paged compaction cannot move this allocator's KV (None when it can).

    An allow-list: SGLang's plain MHA and MLA pools, every buffer one row per slot.
    Subclasses keep more per-token state (e.g. the DSA indexer's keys) that a move would
    leave behind; page-major layouts and per-page scales are not rows per slot.
    """
    get_kvcache = getattr(allocator, "get_kvcache", None)
    if get_kvcache is None or not hasattr(allocator, "free_page_ids"):
        return f"--page-size with the {type(allocator).__name__} allocator"
    return _pool_reason(get_kvcache())


def _pool_reason(kv_pool: Any) -> str | None:
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool

    name = type(kv_pool).__name__
    if type(kv_pool) not in (MHATokenToKVPool, MLATokenToKVPool):
        return f"--page-size with the {name} KV pool (plain MHA and MLA pools only)"
    if getattr(kv_pool, "use_hnd", False) or getattr(kv_pool, "native_k_scale_buffer", None) is not None:
        return f"--page-size with a page-major {name} (SGLANG_USE_HND_KVCACHE or NVFP4 page scales)"
    buffers = _slot_buffers(kv_pool)
    rows = kv_pool.size + kv_pool.page_size
    # at least a row per slot: SGLang may shrink `size` after CUDA-graph capture, not the buffers
    if not buffers or any(b.shape[0] < rows or not b.is_contiguous() for b in buffers):
        return f"--page-size with a {name} whose buffers are not one contiguous row per slot"
    return None


def _slot_buffers(kv_pool: Any) -> list[torch.Tensor]:
    return [b for name in _BUFFER_LISTS for b in (getattr(kv_pool, name, None) or ())]


_TABLES: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def _table(buffers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The buffers' address table for the kernel, cached by their addresses (SGLang may
    swap a pool's buffers, e.g. after CUDA-graph capture)."""
    key = tuple(b.data_ptr() for b in buffers)
    table = _TABLES.get(key)
    if table is None:
        _TABLES.clear()  # one pool per scheduler: keep the latest
        table = _TABLES[key] = buffer_table(buffers)
    return table
