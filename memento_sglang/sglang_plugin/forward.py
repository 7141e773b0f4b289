"""Scheduler side, forward preparation: what a forward batch needs from Memento.

Logical RoPE positions (each request's tokens sit at their logical positions, the
row's slots are physical), the prefill mask plans (staged on the runtime for the
attention backend), and at sampling the rows whose block is out of budget.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from memento_sglang.kernels.extend_masks import mask_entries
from memento_sglang.masks import extend_segments
from memento_sglang.sglang_plugin import runtime
from memento_sglang.sglang_plugin.request_state import sequence_of, synced
from memento_sglang.sglang_plugin.runtime import Plan

if TYPE_CHECKING:
    from sglang.srt.managers.schedule_batch import ScheduleBatch
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

logger = logging.getLogger("memento_sglang")

BUDGET_ROWS = "memento_budget_rows"  # attribute on ForwardBatch
REUSE_REPORTED = "_memento_reuse_reported"  # attribute on Req


def prepare_forward(forward_batch: ForwardBatch, batch: ScheduleBatch) -> None:
    """Logical RoPE positions, prefill masks, and the rows whose block budget applies."""
    is_decode = forward_batch.forward_mode.is_decode()
    plans = {} if is_decode else extend_plans(batch)
    if plans:
        entries = sum(map(mask_entries, batch.prefix_lens, batch.extend_lens))
        logger.info(
            "[memento] masked prefill: %d of %d requests, %d mask entries",
            len(plans),
            len(batch.reqs),
            entries,
        )
    runtime.current().forward.plans = plans
    if not is_decode:
        _report_prefix_reuse(batch)
    _offset_positions(forward_batch, batch)


def extend_plans(batch: ScheduleBatch) -> dict[str, Plan]:
    """Mask plans by request id for the requests of an extend batch that must not see
    some of their own columns."""
    plans = {}
    for i, req in enumerate(batch.reqs):
        seq = sequence_of(req)
        # a backend that cannot mask (e.g. FlashInfer's sliding-window wrappers) gets no mask
        if seq is None or not seq.masked_prefill or not seq.has_due():
            continue
        plan = extend_segments(
            seq.due_evictions(),
            compacted=seq.map,
            prefix_len=batch.prefix_lens[i],
            extend_len=batch.extend_lens[i],
        )
        if plan is not None:
            plans[req.rid] = plan
    return plans


def _offset_positions(forward_batch: ForwardBatch, batch: ScheduleBatch) -> None:
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


def _report_prefix_reuse(batch: ScheduleBatch) -> None:
    """Count what a prefill batch took from the tree through mementos."""
    metrics = runtime.current().metrics
    if not metrics.enabled:
        return
    for req in batch.reqs:
        seq = sequence_of(req)
        if seq is not None and seq.radix_keyed and not getattr(req, REUSE_REPORTED, False):
            stats = seq.stats()
            metrics.blocks_reused.inc(stats.reused_blocks)
            metrics.prompt_tokens_reused.inc(stats.reused_prompt_tokens)
            setattr(req, REUSE_REPORTED, True)


def force_block_ends(logits_output: Any, forward_batch: ForwardBatch) -> None:
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
    row_index = torch.tensor([i for i, _ in forced], device=logits.device)
    cols = torch.tensor([c for _, c in forced], device=logits.device)
    keep = logits[row_index, cols]  # one gather, no host sync: a -inf logit becomes 0
    logits[row_index] = float("-inf")
    logits[row_index, cols] = torch.where(torch.isfinite(keep), keep, torch.zeros_like(keep))
