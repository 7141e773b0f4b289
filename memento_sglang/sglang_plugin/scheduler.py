"""Scheduler-side Memento: attach state to requests, compact rows, fix positions.

Every function here receives SGLang objects from a hook in `hooks.py` and does
one job. Requests carry their state as `req.memento` (a `MementoSequence`, or
absent). The sequence is synced lazily from `req.output_ids`, which SGLang only
appends to after a forward's result is processed, so whatever the sequence
decides is already "processed" in the overlap scheduler's sense.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from memento_sglang.config import MementoConfigError
from memento_sglang.kernels.extend_masks import mask_entries
from memento_sglang.kernels.row_compaction import shift_row_left
from memento_sglang.masks import extend_segments
from memento_sglang.sequence import MementoSequence
from memento_sglang.sglang_plugin import admission, metrics
from memento_sglang.sglang_plugin.attention import stage_plans
from memento_sglang.sglang_plugin.radix_cache import MementoRadixCache, keyed_sequence
from memento_sglang.tracker import Eviction

logger = logging.getLogger("memento_sglang")

STATE = "memento"  # attribute on Req
OUTPUT_SEEN = "_memento_outputs_seen"
REUSE_REPORTED = "_memento_reuse_reported"
BUDGET_ROWS = "memento_budget_rows"  # attribute on ForwardBatch


def sequence_of(req: Any) -> MementoSequence | None:
    return getattr(req, STATE, None)


def synced(req: Any) -> MementoSequence | None:
    """The request's sequence, fed every output token appended since the last call."""
    seq = getattr(req, STATE, None)
    if seq is None:
        return None
    seen = getattr(req, OUTPUT_SEEN, 0)
    out = req.output_ids
    if len(out) > seen:
        before = len(seq.tracker.closed_blocks)
        seq.on_output_tokens(out[seen:])
        setattr(req, OUTPUT_SEEN, len(out))
        closed = seq.tracker.closed_blocks[before:]
        if closed:
            admission.observe(seq)
        if closed and (m := metrics.current()) is not None:
            m.blocks_closed.inc(len(closed))
        if seq.spec.config.debug:
            for block in closed:
                logger.info("[memento] rid=%s memento closed: %s", req.rid, block)
    return seq


# ------------------------------------------------------------------ requests


def attach(req: Any, resolver: Any, tree_cache: Any, *, masked_prefill: bool) -> None:
    """Give a new request its Memento state, or abort it on a bad per-request config.

    With a masked prefill, closed blocks inside the prompt are hidden from the
    prompt tokens after them and compacted before the first decode step. The
    Memento radix cache keys such rows in a namespace of their own (the policy
    decides what the KV means); a stock tree would be poisoned, so there such a
    request stays out of the tree.
    """
    try:
        spec = resolver.spec_for(req.sampling_params.custom_params)
    except MementoConfigError as exc:  # normally rejected earlier with HTTP 400
        req.set_finish_with_abort(str(exc))
        return
    if spec is None:
        return
    if (reason := refused_mode(req.sampling_params)) is not None:  # normally HTTP 400 earlier
        req.set_finish_with_abort(reason)
        return
    if spec.config.restart_mode and not masked_prefill:
        req.set_finish_with_abort("restart_mode needs a prefill attention backend that can mask")
        return
    seq = MementoSequence(spec, list(req.origin_input_ids), evict_prompt_blocks=masked_prefill)
    setattr(req, STATE, seq)
    setattr(req, OUTPUT_SEEN, 0)
    if seq.tracker.closed_blocks and (m := metrics.current()) is not None:
        m.blocks_closed.inc(len(seq.tracker.closed_blocks))
    if isinstance(tree_cache, MementoRadixCache) and not tree_cache.disable:
        seq.radix_keyed = True
        req.extra_key = f"{req.extra_key or ''}|{spec.kv_namespace(masked_prefill=masked_prefill)}"
    elif seq.has_due():
        req.skip_radix_cache_insert = True
    if spec.config.debug:
        logger.info(
            "[memento] rid=%s tracking: prompt %d tokens, %d closed blocks in the prompt (%s)",
            req.rid,
            seq.prompt_len,
            len(seq.tracker.closed_blocks),
            "masked prefill" if masked_prefill else "kept visible",
        )


def refused_mode(sampling_params: Any) -> str | None:
    """Why a request that Memento tracks cannot run with its sampling options (None if it can).

    Beam search forks member rows from the leader's row and scores them together; a
    member's blocks would close at its own steps, which one row's compaction cannot follow.
    """
    beam_width = getattr(sampling_params, "beam_width", None) or 1
    if beam_width > 1:
        return (
            f"beam search (beam_width={beam_width}) is not supported with Memento; send this request "
            'with custom_params {"memento": {"enable": false}} to search without eviction'
        )
    return None


def cap_prefix_match(req: Any, max_prefix_len: int) -> int:
    """A cached prefix is reusable only up to the first query that must not see a block."""
    seq = sequence_of(req)
    if seq is None or seq.radix_keyed:  # the Memento radix cache cuts its own matches
        return max_prefix_len
    first = seq.first_due_trigger
    return max_prefix_len if first is None else min(max_prefix_len, first + 1)


def physical_fill_ids(req: Any) -> bool:
    """A tree-keyed request's fill ids are its row's ids (compacted spans removed),
    so SGLang's length arithmetic (prefix, extend) stays in row slots. False
    leaves the request to SGLang."""
    seq = synced(req)
    if seq is None or keyed_sequence(req) is None:
        return False
    req.full_untruncated_fill_ids = seq.physical_ids()
    return True


def observe_row(req: Any, seq: MementoSequence) -> None:
    if req.kv.holds_kv:
        protected = req.kv.cache_protected_len
        seq.observe_row(protected, req.kv.kv_allocated_len - protected)


_memory_retraction_depth = 0


@contextmanager
def memory_retraction() -> Iterator[None]:
    """SGLang is releasing rows to make room (retract_decode, priority preemption);
    other releases (pause_generation for new weights, aborts) must not keep work."""
    global _memory_retraction_depth
    _memory_retraction_depth += 1
    try:
        yield
    finally:
        _memory_retraction_depth -= 1


def in_memory_retraction() -> bool:
    return _memory_retraction_depth > 0


def keeps_work_on_retraction(req: Any, tree_cache: Any) -> bool:
    """Whether a retracted request's compacted row should go into the Memento tree.

    Its re-admission then matches the tree through its mementos and prefills only
    what the tree lost meanwhile, instead of prompt + every output token. Only for
    releases that make room: rows retracted for new weights, or about to be aborted
    (`to_finish`), must not be reused. (`restart_mode` retracts to recompute mementos.)
    """
    seq = keyed_sequence(req)
    return (
        seq is not None
        and in_memory_retraction()
        and getattr(req, "to_finish", None) is None
        and not req.finished()
        and isinstance(tree_cache, MementoRadixCache)
        and not tree_cache.disable
        and not seq.spec.config.restart_mode
    )


def compact_before_release(req: Any, tree_cache: Any, *, checkpoint: bool) -> None:
    """Before a row is released: a finished row bound for the Memento tree first
    compacts the blocks whose memento closed since the last decode step (so the
    tree gets the mementos keyed); then the row's last shape goes into the stats."""
    seq = synced(req)
    if seq is None or not req.kv.holds_kv:
        return
    # restart_mode: a memento that closed without its re-prefill has KV computed with its
    # block visible; it stays due, so insert_limit keeps it out of the tree.
    if checkpoint and seq.radix_keyed and seq.has_due() and not seq.needs_restart():
        due = seq.take_due(req.kv.kv_committed_len + seq.position_offset + 1)
        if due:
            pool, allocator = tree_cache.req_to_token_pool, tree_cache.token_to_kv_pool_allocator
            _compact_row(req, seq, due, pool, allocator, tree_cache)
    observe_row(req, seq)
    if req.finished():
        report_admission_error(seq)


def report_admission_error(seq: MementoSequence) -> None:
    stats = seq.stats()
    if stats.admission_growth_bound is None or (m := metrics.current()) is None:
        return
    m.admission_bound_tokens.inc(stats.admission_growth_bound)
    m.admission_growth_tokens.inc(stats.admission_growth_bound - seq.admission_error)


def report_prefix_reuse(batch: Any) -> None:
    """Count what a prefill batch took from the tree through mementos."""
    if (m := metrics.current()) is None:
        return
    for req in batch.reqs:
        seq = sequence_of(req)
        if seq is not None and seq.radix_keyed and not getattr(req, REUSE_REPORTED, False):
            stats = seq.stats()
            m.blocks_reused.inc(stats.reused_blocks)
            m.prompt_tokens_reused.inc(stats.reused_prompt_tokens)
            setattr(req, REUSE_REPORTED, True)


def on_row_released(req: Any) -> None:
    seq = synced(req)
    if seq is not None:
        seq.on_row_released()


def retract_for_restart(scheduler: Any, batch: Any) -> None:
    """`restart_mode`: send requests whose memento just closed back to prefill.

    SGLang's own retraction frees the row (a result still in flight for it is
    dropped) and queues the request; its re-prefill recomputes every memento with
    its block masked, and the blocks are then compacted as usual.
    """
    restart = [
        i for i, req in enumerate(batch.reqs)
        if not req.finished() and req.beam_group is None
        and (seq := synced(req)) is not None and seq.needs_restart()
    ]  # fmt: skip
    if not restart:
        return
    batch.batch_is_full = False  # room for the re-queued requests
    reqs = [batch.reqs[i] for i in restart]
    for n, i in enumerate(restart):
        batch.release_req(i, len(batch.reqs) - n - 1, offload_kv=False)
    batch.filter_batch(reqs_to_exclude=reqs)
    if (m := metrics.current()) is not None:
        m.restarts.inc(len(reqs))
    for req in reqs:
        if sequence_of(req).spec.config.debug:
            logger.info("[memento] rid=%s restart: re-prefill with the closed block masked", req.rid)
        scheduler._add_request_to_queue(req, is_retracted=True)


# ---------------------------------------------------------------- compaction


def compact_running_batch(batch: Any) -> int:
    """Evict every due block of a running batch, fix its length tensors; return the slots
    removed from rows. Runs before admission and again before the decode step (idempotent).

    A span is due once its trigger token's KV slot is in the row and that token
    has been processed; so the first query that no longer sees the block is the
    one right after the trigger, in both overlap and non-overlap scheduling.
    """
    removed: list[tuple[int, int]] = []
    for i, req in enumerate(batch.reqs):
        seq = synced(req)
        # restart_mode: a memento that just closed is recomputed by a re-prefill first
        # (retract_for_restart, which runs right after this before a decode step)
        if seq is None or not seq.has_due() or seq.needs_restart():
            continue
        due = seq.take_due(req.kv.kv_allocated_len + seq.position_offset)
        if due:
            pool, allocator = batch.req_to_token_pool, batch.token_to_kv_pool_allocator
            removed.append((i, _compact_row(req, seq, due, pool, allocator, batch.tree_cache)))
    if (m := metrics.current()) is not None:
        m.kv_tokens_saved.set(sum(s.position_offset for r in batch.reqs if (s := sequence_of(r))))
    if not removed:
        return 0
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
    return sum(n for _, n in removed)


def _compact_row(
    req: Any, seq: MementoSequence, due: list[Eviction], pool: Any, allocator: Any, tree_cache: Any
) -> int:
    """Shift the request's row left over each span and free the slots it owns.

    Zero copy: only int32 slot indices move; KV stays where it was computed. Slots
    in `[0, cache_protected_len)` belong to the radix tree and are not freed here;
    the Memento tree lets go of a block it holds (and frees it if no one else needs it).
    """
    kv = req.kv
    table = pool.req_to_token
    row = kv.req_pool_idx
    removed = 0
    for ev in due:
        start, end = seq.map.add(ev.start, ev.end)
        n = end - start
        if seq.radix_keyed:
            freed = tree_cache.release_block(req, start, end)
            if freed and (m := metrics.current()) is not None:
                m.tree_tokens_evicted.inc(freed)
        length = kv.kv_allocated_len
        protected = kv.cache_protected_len
        owned_from = max(start, protected)
        removed_slots = shift_row_left(table, row, start, end, length)
        if owned_from < end:
            allocator.free(removed_slots[owned_from - start :])
        kv.cache_protected_len = protected - max(0, min(end, protected) - start)
        kv.kv_committed_len -= n
        kv.kv_allocated_len -= n
        removed += n
        if (m := metrics.current()) is not None:
            m.blocks_evicted.inc()
            m.tokens_evicted.inc(n)
        if seq.spec.config.debug:
            logger.info(
                "[memento] rid=%s evicted logical [%d, %d) (block %d, trigger %d): "
                "kv %d -> %d tokens, %d freed, %d tree-owned",
                req.rid, ev.start, ev.end, ev.block.index, ev.trigger,
                length, kv.kv_allocated_len, max(0, end - owned_from), n - max(0, end - owned_from),
            )  # fmt: skip
    # The row no longer pairs logical ids with their KV slots one to one; a stock
    # radix tree would be poisoned by inserting it (the prompt stays cached).
    if not seq.radix_keyed:
        req.skip_radix_cache_insert = True
    return removed


# ----------------------------------------------------------------- positions


def prepare_forward(forward_batch: Any, batch: Any) -> None:
    """Logical RoPE positions, prefill masks, and the rows whose block budget applies."""
    is_decode = forward_batch.forward_mode.is_decode()
    plans = {} if is_decode else _extend_plans(batch)
    if plans:
        entries = sum(map(mask_entries, batch.prefix_lens, batch.extend_lens))
        logger.info(
            "[memento] masked prefill: %d of %d requests, %d mask entries",
            len(plans),
            len(batch.reqs),
            entries,
        )
    stage_plans(plans)
    if not is_decode:
        report_prefix_reuse(batch)
    _offset_positions(forward_batch, batch)


def _extend_plans(batch: Any) -> dict:
    plans = {}
    for i, req in enumerate(batch.reqs):
        seq = sequence_of(req)
        # a backend that cannot mask (e.g. FlashInfer's sliding-window wrappers) gets no mask
        if seq is None or not seq.masked_prefill or not seq.has_due():
            continue
        plan = extend_segments(
            seq.due_evictions(),
            offset=seq.position_offset,
            prefix_len=batch.prefix_lens[i],
            extend_len=batch.extend_lens[i],
        )
        if plan is not None:
            plans[req.rid] = plan
    return plans


def _offset_positions(forward_batch: Any, batch: Any) -> None:
    """RoPE positions are logical: add each request's evicted-token count."""
    reqs = batch.reqs
    offsets = [(s.position_offset if (s := sequence_of(r)) is not None else 0) for r in reqs]
    budget_rows = [
        (i, r) for i, r in enumerate(reqs)
        if (s := sequence_of(r)) is not None and s.spec.config.max_block_tokens > 0
    ]  # fmt: skip
    if budget_rows:
        setattr(forward_batch, BUDGET_ROWS, budget_rows)
    if not any(offsets):
        return
    positions = forward_batch.positions
    if forward_batch.forward_mode.is_decode():
        # Beam member rows follow the requests' rows; Memento never tracks them (refused_mode).
        offsets += [0] * (positions.shape[0] - len(offsets))
        per_req = torch.tensor(offsets, dtype=positions.dtype, device=positions.device)
        forward_batch.positions = positions + per_req
    else:
        # built on the host and copied once: repeat_interleave on device lengths syncs
        per_token = torch.repeat_interleave(
            torch.tensor(offsets, dtype=positions.dtype), torch.tensor(batch.extend_lens)
        )
        forward_batch.positions = positions + per_token.to(positions.device, non_blocking=True)


# -------------------------------------------------------------------- budget


def force_block_ends(logits_output: Any, forward_batch: Any) -> None:
    """`max_block_tokens`: where a block is full, only `<|block_end|>` may be sampled."""
    rows = getattr(forward_batch, BUDGET_ROWS, None)
    if not rows:
        return
    forced = []
    for i, req in rows:
        seq = synced(req)
        if seq is not None and seq.tracker.block_budget_exhausted:
            forced.append((i, seq.spec.ids.block_end))
    if not forced:
        return
    logits = logits_output.next_token_logits
    rows = torch.tensor([i for i, _ in forced], device=logits.device)
    cols = torch.tensor([c for _, c in forced], device=logits.device)
    keep = logits[rows, cols]  # one gather, no host sync: a -inf logit becomes 0
    logits[rows] = float("-inf")
    logits[rows, cols] = torch.where(torch.isfinite(keep), keep, torch.zeros_like(keep))


# --------------------------------------------------------------------- stats


def memento_streamer_class(base: type) -> type:
    """SGLang's output streamer plus `customized_info["memento"]` per request."""

    class MementoOutputStreamer(base):
        has_additional_customized_info = True

        def build_additional_customized_info(self, reqs):
            info = super().build_additional_customized_info(reqs)
            seqs = [synced(r) for r in reqs]
            for req, seq in zip(reqs, seqs, strict=True):
                if seq is not None:
                    observe_row(req, seq)
            if any(s is not None for s in seqs):
                info["memento"] = [None if s is None else s.stats().model_dump() for s in seqs]
            return info

    MementoOutputStreamer.__qualname__ = f"Memento{base.__qualname__}"
    return MementoOutputStreamer
