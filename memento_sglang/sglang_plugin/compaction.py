"""Scheduler side, compaction: closed blocks leave their KV rows.

A span is due once its trigger token's KV slot is in the row and that token has been
processed; the first query that no longer sees the block is the one right after the
trigger, in both overlap and non-overlap scheduling. Compaction shifts the row's
slot indices left over the span (`kernels.row_compaction`), frees the slots the
request owns, and shortens the row's lengths; with page size 1 KV itself never moves.
With pages (`--page-size` > 1) rows must stay page-consecutive: the step's rows are
planned and applied together by `paged_compaction`, which moves the KV of the few
survivors of partial pages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import torch

from memento_sglang.kernels.row_compaction import shift_row_left
from memento_sglang.sequence import MementoSequence
from memento_sglang.sglang_plugin import runtime
from memento_sglang.sglang_plugin.paged_compaction import PagedRow, compact_paged_rows, tree_holds_span_page
from memento_sglang.sglang_plugin.request_state import sequence_of, synced
from memento_sglang.tracker import Eviction

if TYPE_CHECKING:
    from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
    from sglang.srt.mem_cache.base_prefix_cache import BasePrefixCache

logger = logging.getLogger("memento_sglang")


def compact_running_batch(batch: ScheduleBatch) -> int:
    """Evict every due block of a running batch and fix its length tensors; return the
    slots removed from rows. Runs before admission and again before the decode step
    (idempotent)."""
    due_rows: list[tuple[int, _DueRow]] = []
    for i, req in enumerate(batch.reqs):
        seq = synced(req)
        # restart_mode: a memento that just closed is recomputed by a re-prefill first
        # (retract_for_restart, which runs right after this before a decode step)
        if seq is None or not seq.has_due() or seq.needs_restart():
            continue
        due = seq.take_due_in_row(req.kv.kv_allocated_len)
        if due:
            due_rows.append((i, _DueRow(req, seq, due)))
    metrics = runtime.current().metrics
    removed: list[tuple[int, int]] = []
    if due_rows:
        owners = _Owners(batch.req_to_token_pool, batch.token_to_kv_pool_allocator, batch.tree_cache)
        counts = _compact_rows(owners, [row for _, row in due_rows])
        removed = [(i, n) for (i, _), n in zip(due_rows, counts, strict=True)]
    if metrics.enabled:  # a Python pass over the batch every step: only when someone reads it
        metrics.kv_tokens_saved.set(sum(s.position_offset for r in batch.reqs if (s := sequence_of(r))))
    if removed:
        _shorten_batch_lengths(batch, removed)
    return sum(n for _, n in removed)


def compact_before_release(req: Req, tree_cache: BasePrefixCache, *, checkpoint: bool) -> None:
    """Before a row is released: a row bound for the Memento tree first compacts the
    blocks whose memento closed since the last decode step (so the tree gets the
    mementos keyed); then the row's last shape goes into the stats."""
    seq = synced(req)
    if seq is None or not req.kv.holds_kv:
        return
    # restart_mode: a memento that closed without its re-prefill has KV computed with its
    # block visible; it stays due, so insert_limit keeps it out of the tree.
    if checkpoint and seq.radix_keyed and seq.has_due() and not seq.needs_restart():
        due = seq.take_due_at_release(req.kv.kv_committed_len)
        if due:
            owners = _Owners(tree_cache.req_to_token_pool, tree_cache.token_to_kv_pool_allocator, tree_cache)
            _compact_rows(owners, [_DueRow(req, seq, due)])
    observe_row(req, seq)
    if req.finished():
        _report_admission_error(seq)


def observe_row(req: Req, seq: MementoSequence) -> None:
    """Tell the sequence how its KV row splits between the tree and the request."""
    if req.kv.holds_kv:
        protected = req.kv.cache_protected_len
        seq.observe_row(protected, req.kv.kv_allocated_len - protected)


# ------------------------------------------------------------------ rows


@dataclass(frozen=True, slots=True)
class _Owners:
    """The SGLang structures that own a batch's rows and slots."""

    req_to_token_pool: Any
    allocator: Any
    tree_cache: BasePrefixCache


@dataclass(frozen=True, slots=True)
class _DueRow:
    """A request whose due evictions leave its row in this step."""

    req: Req
    seq: MementoSequence
    due: list[Eviction]


def _compact_rows(owners: _Owners, rows: list[_DueRow]) -> list[int]:
    """Take each row's due spans out of it; return the slots each row lost.

    Slots in `[0, cache_protected_len)` belong to the radix tree and are not freed
    here; the Memento tree lets go of a block it holds (and frees it if no one else
    needs it). With pages, all rows are planned first and applied together.
    """
    if owners.allocator.page_size == 1:
        counts = [sum(_evict_span(owners, row.req, row.seq, ev) for ev in row.due) for row in rows]
    else:
        counts = _compact_paged(owners, rows)
    for row in rows:
        # The row no longer pairs logical ids with their KV slots one to one; a stock
        # radix tree would be poisoned by inserting it (the prompt stays cached).
        if not row.seq.radix_keyed:
            row.req.skip_radix_cache_insert = True
    return counts


def _evict_span(owners: _Owners, req: Req, seq: MementoSequence, ev: Eviction) -> int:
    """Page size 1: shift the row's slot indices over the span, free what the request owns."""
    start, end = seq.apply_eviction(ev)  # the span's slots in the row, before removal
    if seq.radix_keyed:
        runtime.current().metrics.tree_tokens_evicted.inc(owners.tree_cache.release_block(req, start, end))
    kv = req.kv
    length, protected = kv.kv_allocated_len, kv.cache_protected_len
    owned_from = max(start, protected)
    removed_slots = shift_row_left(owners.req_to_token_pool.req_to_token, kv.req_pool_idx, start, end, length)
    if owned_from < end:
        owners.allocator.free(removed_slots[owned_from - start :])
    kv.cache_protected_len = protected - max(0, min(end, protected) - start)
    _shorten_row(req, seq, ev, length, freed=max(0, end - owned_from))
    return end - start


def _compact_paged(owners: _Owners, rows: list[_DueRow]) -> list[int]:
    """Page size > 1: every row's spans, in the row as it is now, planned and applied at once.

    A row whose first span starts in a page the prefix tree owns cannot be compacted
    (the tree's pages are shared). The Memento tree never takes such a page; a request
    it stopped keying (SGLang replaced its prompt) could reach here: it is aborted with
    an error rather than decode with its block still visible.
    """
    page = int(owners.allocator.page_size)
    kept: list[_DueRow] = []
    for row in rows:
        start = row.seq.map.to_physical(row.due[0].start)
        if tree_holds_span_page(row.req.kv.cache_protected_len, start, page):
            _abort_uncompactable(row.req, start)
        else:
            kept.append(row)
    counts = dict.fromkeys(map(id, rows), 0)
    counts.update(zip(map(id, kept), _compact_paged_rows(owners, kept), strict=True))
    return [counts[id(row)] for row in rows]


def _abort_uncompactable(req: Req, start: int) -> None:
    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    message = (
        f"Memento: the prefix cache holds the page where a closed block starts (row slot {start}); "
        "with --page-size > 1 it cannot leave the row"
    )
    logger.error("[memento] rid=%s: %s", req.rid, message)
    req.to_finish = FINISH_ABORT(message, HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError")


def _compact_paged_rows(owners: _Owners, rows: list[_DueRow]) -> list[int]:
    if not rows:
        return []
    paged: list[PagedRow] = []
    for row in rows:
        spans, removed = [], 0
        for ev in row.due:
            start, end = row.seq.apply_eviction(ev)  # after this step's earlier removals
            spans.append((start + removed, end + removed))
            removed += end - start
        kv = row.req.kv
        paged.append(PagedRow(kv.req_pool_idx, kv.kv_allocated_len, kv.cache_protected_len, tuple(spans)))
    plans = compact_paged_rows(paged, owners.req_to_token_pool.req_to_token, owners.allocator)
    runtime.current().metrics.kv_tokens_moved.inc(sum(plan.copied for plan in plans))
    counts = []
    for row, plan_row in zip(rows, paged, strict=True):
        length = plan_row.length
        for ev in row.due:
            length = _shorten_row(row.req, row.seq, ev, length, freed=ev.size)
        counts.append(plan_row.length - length)
    return counts


def _shorten_row(req: Req, seq: MementoSequence, ev: Eviction, length: int, *, freed: int) -> int:
    """The request's lengths lose the span; metrics and the debug log. Returns the new length."""
    kv, n = req.kv, ev.size
    kv.kv_committed_len -= n
    kv.kv_allocated_len -= n
    metrics = runtime.current().metrics
    metrics.blocks_evicted.inc()
    metrics.tokens_evicted.inc(n)
    if seq.spec.config.debug:
        logger.info(
            "[memento] rid=%s evicted logical [%d, %d) (block %d, trigger %d): "
            "kv %d -> %d tokens, %d freed, %d tree-owned",
            req.rid, ev.start, ev.end, ev.block.index, ev.trigger,
            length, length - n, freed, n - freed,
        )  # fmt: skip
    return length - n


def _shorten_batch_lengths(batch: ScheduleBatch, removed: list[tuple[int, int]]) -> None:
    """The batch's length tensors lose what each row lost."""
    # Rows past len(reqs) are the previous step's beam tail (Memento-off beam members).
    delta_cpu = torch.zeros(batch.seq_lens_cpu.shape[0], dtype=batch.seq_lens_cpu.dtype)
    for i, n in removed:
        delta_cpu[i] = n
    # Out of place: an in-flight forward of the overlap scheduler aliases these.
    batch.seq_lens = batch.seq_lens - delta_cpu.to(batch.seq_lens.device, batch.seq_lens.dtype)
    batch.seq_lens_cpu = batch.seq_lens_cpu - delta_cpu
    if batch.orig_seq_lens is not None:
        batch.orig_seq_lens = batch.orig_seq_lens - delta_cpu.to(
            batch.orig_seq_lens.device, batch.orig_seq_lens.dtype
        )
    batch.seq_lens_sum = None


def _report_admission_error(seq: MementoSequence) -> None:
    """A finished request admitted on the Memento bound: what was reserved, what it used."""
    stats = seq.stats()
    if stats.admission_growth_bound is None or seq.admission_error is None:
        return
    metrics = runtime.current().metrics
    metrics.admission_bound_tokens.inc(stats.admission_growth_bound)
    metrics.admission_growth_tokens.inc(stats.admission_growth_bound - seq.admission_error)
