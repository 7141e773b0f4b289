"""Memento-aware admission: SGLang's KV budget sees what a Memento request can still hold.

SGLang's `PrefillAdder` reserves `min(max_new_tokens - output, CLIP)` tokens of
future KV for every request: for a new one in full, for a running one times the
new-token ratio. A Memento request never holds more than its prompt, its mementos
and one open cycle, so that reservation keeps the pool half empty. Here every place
where SGLang estimates a request's future growth gets the same Memento estimate
(`MementoSequence.future_growth`, from the cycles this server has seen):

- new requests, a chunked prompt's last chunk and priority preemption: the
  module-level `CLIP_MAX_NEW_TOKENS` that those methods read is lowered to the
  request's estimate for the duration of the call (`estimate_scope`);
- running requests: `running_reservation` replaces SGLang's offset with the same
  estimate, undiscounted: it is a bound, not SGLang's early-stop bet (the
  new-token ratio and its back-off after a retraction still govern every request
  the estimate does not cover); and the batch's Memento rows are then reserved
  together (`pooled_correction`): the most they hold at once, not the sum of each
  one's most, since rows that finish first free their slots for the others.

Where the estimate does not apply (no Memento, nothing learned yet, eviction off,
restart_mode, after `</think>`) SGLang's own figure stands, and the Memento figure is
never above SGLang's `min(remaining, CLIP)`. One estimator per scheduler process,
on its `MementoRuntime`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sglang.srt.managers import schedule_policy
from sglang.srt.mem_cache.radix_cache import TreeNode

from memento_sglang.growth import CycleStats, Growth, RunningRow, expected_reservation, pooled_growth
from memento_sglang.sequence import MementoSequence

if TYPE_CHECKING:
    from sglang.srt.managers.schedule_batch import Req


class AdmissionEstimator:
    """Cycles the model closed on this server, and each request's future KV growth from them."""

    def __init__(self, *, learning: bool = True, margin_sigmas: float | None = 3.0) -> None:
        #: False outside a scheduler: nothing is learned, SGLang's own estimate applies
        self.learning = learning
        #: the running batch's margin over its expected growth (None: the bound, no bet)
        self.margin_sigmas = margin_sigmas
        self.cycles = CycleStats()
        #: the last running-batch reservation was below the joint bound (a bet is on)
        self.betting = False

    def observe(self, seq: MementoSequence) -> None:
        if not self.learning:
            return
        for cycle_tokens, evicted in seq.take_new_cycles():
            self.cycles.observe(cycle_tokens, evicted)

    def growth(self, req: Req, seq: MementoSequence | None) -> Growth | None:
        """The request's future growth, at most SGLang's `min(remaining, CLIP)`; None where
        SGLang's own estimate applies."""
        if seq is None or not self.learning:
            return None
        remaining = max(req.sampling_params.max_new_tokens - len(req.output_ids), 0)
        growth = seq.future_growth(remaining, self.cycles.bounds())
        if growth is None:
            return None
        stock = min(remaining, _STOCK_CLIP)
        if growth.total <= stock:
            return growth
        return replace(growth, open=min(growth.open, stock), total=stock)

    def pooled_correction(self, reqs: list[Req], synced: Callable[[Any], MementoSequence | None]) -> float:
        """How much less the running batch needs than the sum of its rows' bounds.

        SGLang sums one reservation per running request; Memento rows covered by the
        estimate are reserved together instead (`pooled_reservation`): rows that finish
        first free their slots before the others reach their peak, and the open blocks
        of many rows are reserved near their expected sum.
        """
        rows = []
        for req in reqs:
            growth = self.growth(req, synced(req))
            if growth is not None:
                remaining = max(req.sampling_params.max_new_tokens - len(req.output_ids), 0)
                rows.append(RunningRow(own=_freed_at_finish(req), growth=growth, remaining=remaining))
        self.betting = False
        if len(rows) < 2:
            return 0.0
        bounds = self.cycles.bounds()
        rate_variance = 0.0 if bounds is None or bounds.in_flight is None else bounds.in_flight.rate_variance
        bound = pooled_growth(rows)
        bet = expected_reservation(rows, self.margin_sigmas, rate_variance)
        self.betting = bet is not None and bet < bound
        reserved = bound if bet is None else min(bound, bet)
        return reserved - sum(row.growth.total for row in rows)

    def on_retraction(self, seq: MementoSequence | None) -> None:
        """SGLang retracted a request for memory: if it was admitted on the Memento
        estimate, or the running batch was reserved on a bet (SGLang picks the row to
        retract itself, whatever made the pool run short), back off."""
        admitted_on_estimate = seq is not None and seq.stats().admission_growth_bound is not None
        if admitted_on_estimate or self.betting:
            self.cycles.back_off()
            self.betting = False


def _freed_at_finish(req: Req) -> int:
    """Slots that are free or evictable once the request finishes: the part of its row
    outside the tree, and the tree nodes no other request holds (lock count 1)."""
    if not req.kv.holds_kv:
        return 0
    own = max(0, req.kv.kv_allocated_len - req.kv.cache_protected_len)
    lock = getattr(req, "lock", None)
    node = getattr(lock, "node", None)
    while isinstance(node, TreeNode) and node.parent is not None and node.lock_ref == 1:
        own += len(node.key)
        node = node.parent
    return own


_STOCK_CLIP = schedule_policy.CLIP_MAX_NEW_TOKENS


@contextmanager
def estimate_scope(
    estimator: AdmissionEstimator, req: Req, seq: MementoSequence | None
) -> Iterator[Growth | None]:
    """Within the block, SGLang's clip of this request's estimate is its Memento growth.

    `PrefillAdder.add_one_req`, `add_chunked_req` and `preempt_to_schedule` read the
    module global `CLIP_MAX_NEW_TOKENS` at call time for the request they admit (every
    other request they look at goes through `running_reservation`, which restores the
    stock clip for its own figure).
    """
    growth = estimator.growth(req, seq)
    if growth is None:
        yield None
        return
    schedule_policy.CLIP_MAX_NEW_TOKENS = growth.total
    try:
        yield growth
    finally:
        schedule_policy.CLIP_MAX_NEW_TOKENS = _STOCK_CLIP


@contextmanager
def stock_clip() -> Iterator[None]:
    """SGLang's own clip, whatever request's estimate is in scope around this block."""
    scoped = schedule_policy.CLIP_MAX_NEW_TOKENS
    schedule_policy.CLIP_MAX_NEW_TOKENS = _STOCK_CLIP
    try:
        yield
    finally:
        schedule_policy.CLIP_MAX_NEW_TOKENS = scoped


def running_reservation(
    estimator: AdmissionEstimator, stock: float, req: Req, seq: MementoSequence | None
) -> float:
    """A running request's reserved future KV.

    SGLang's `stock` offset is `min(remaining, CLIP) * new_token_ratio`: an expectation
    that bets on early stops and retracts when the bet fails. A Memento request's
    growth is a bound (what its open cycle and its future mementos can add), reserved
    whole: it is small enough that no bet is needed, so the pool is not over-committed
    and nothing is retracted while traces stay within the learned cycle bounds.
    """
    growth = estimator.growth(req, seq)
    return stock if growth is None else growth.total
