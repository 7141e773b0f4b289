"""Per-request Memento state: tracker, logical/physical map, KV statistics.

`MementoSequence` is the one object per request that knows which logical spans are
due to leave the KV row, which already left it, and what that did to the live KV.
It is pure (no SGLang, no torch); the SGLang hooks only ask it what to compact and
tell it what they compacted.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict

from memento_sglang.config import MementoSpec
from memento_sglang.growth import CycleBounds, Growth, memento_growth
from memento_sglang.radix_keys import radix_key
from memento_sglang.spans import EMPTY, SpanMap
from memento_sglang.tracker import BlockTracker, Eviction, Phase


class MementoStats(BaseModel):
    """What `meta_info["memento"]` reports for a request.

    KV counts are "keys seen by a forward pass": `live_kv_tokens` by the last one,
    `peak_live_kv_tokens` the maximum over the request (prefill included), and
    `peak_kv_tokens_without_eviction` what the last pass would have seen with
    nothing evicted (prompt + output - 1).
    """

    model_config = ConfigDict(frozen=True)

    blocks_closed: int
    blocks_evicted: int
    tokens_evicted: int
    live_kv_tokens: int
    peak_live_kv_tokens: int
    peak_kv_tokens_without_eviction: int
    anomalies: int
    reused_prompt_tokens: int = 0
    reused_blocks: int = 0
    tree_kv_slots: int = 0
    own_kv_slots: int = 0
    #: Memento-aware admission: the growth bound reserved when the request was admitted
    #: and its live KV then (None: SGLang's own estimate applied)
    admission_growth_bound: int | None = None
    admission_live_kv_tokens: int | None = None


class MementoSequence:
    """Tracker + eviction bookkeeping + statistics of one request."""

    def __init__(
        self,
        spec: MementoSpec,
        prompt_ids: Sequence[int],
        *,
        evict_prompt_blocks: bool = False,
    ) -> None:
        self.spec = spec
        self.prompt_len = len(prompt_ids)
        self.radix_keyed = False  # KV shared through the Memento radix tree (set by the host)
        #: the server's prefill applies Memento masks; without, no mask is ever staged
        self.masked_prefill = evict_prompt_blocks
        self._ids = array("q", prompt_ids)  # every token fed: prompt, then outputs
        self._reused = (0, 0)  # (logical prompt tokens, blocks) adopted from the tree
        self._row_slots = (0, 0)  # (tree-owned, request-owned) slots of the KV row
        self.tracker = BlockTracker(spec)
        #: spans compacted out of the row (replaced, never mutated: holders keep their view)
        self.map: SpanMap = EMPTY
        self._decided: list[Eviction] = []  # enacted decisions, in trigger order
        self._due: deque[Eviction] = deque()  # decided, not applied to the row yet
        self._seen_by_stats = 0  # decisions counted into the last query's view
        self._prefilled_len = self.prompt_len  # tokens whose KV came from a masked prefill
        self._hidden_tokens = 0
        self._live = 0
        self._peak = 0
        self._cycles_reported = 0
        self._admission: tuple[int, int] | None = None  # (growth bound, live KV) at admission
        for ev in self.tracker.feed_many(list(prompt_ids)):
            # Without a masked prefill, later prompt tokens would attend to these
            # blocks; evicting them afterwards would not be exact, so they stay.
            if evict_prompt_blocks:
                self._decide(ev)
        self._observe_query(self.prompt_len - 1)

    # ----------------------------------------------------------------- feeding

    def on_output_tokens(self, token_ids: Iterable[int]) -> None:
        """Feed newly generated tokens (in order) as SGLang appends them."""
        for tid in token_ids:
            position = self.tracker.position
            self._ids.append(tid)
            for ev in self.tracker.feed(tid):
                self._decide(ev)
            # the pass that produced `position` ran its query at `position - 1`
            self._observe_query(position - 1)

    @property
    def total_len(self) -> int:
        return self.tracker.position

    # --------------------------------------------------------------- compaction

    def take_due(self, logical_len: int) -> list[Eviction]:
        """Evictions whose trigger token is among the first `logical_len` tokens.

        A block must stay visible to its own `<|summary_end|>`; once that token's KV
        is in the row, the next query is the first that may not see the block.
        """
        out = []
        while self._due and self._due[0].trigger < logical_len:
            out.append(self._due.popleft())
        return out

    def take_due_in_row(self, allocated_len: int) -> list[Eviction]:
        """Before a decode step: evictions whose trigger has one of the row's
        `allocated_len` (physical) KV slots."""
        return self.take_due(self.map.to_logical(allocated_len))

    def take_due_at_release(self, committed_len: int) -> list[Eviction]:
        """Before a row of `committed_len` processed slots goes to the tree (finished, or
        retracted keeping its work): also the eviction triggered by the last token fed,
        which has no KV in the row; no query of this row sees the block again."""
        return self.take_due(self.map.to_logical(committed_len) + 1)

    def apply_eviction(self, ev: Eviction) -> tuple[int, int]:
        """`ev` leaves the row: return its physical `[start, end)` before removal."""
        first = self.map.to_physical(ev.start)
        self.map = self.map.with_span(ev.start, ev.end)
        return first, first + ev.end - ev.start

    def has_due(self) -> bool:
        return bool(self._due)

    def due_evictions(self) -> tuple[Eviction, ...]:
        """Decided but still in the row: a prefill must hide them with a mask."""
        return tuple(self._due)

    @property
    def first_due_trigger(self) -> int | None:
        """Queries up to this position see everything (their KV equals causal KV)."""
        return self._due[0].trigger if self._due else None

    @property
    def position_offset(self) -> int:
        """Logical minus physical index of every token appended from now on."""
        return self.map.evicted_tokens

    def needs_restart(self) -> bool:
        """`restart_mode`: a memento closed after the last prefill, so its KV (computed
        while its block was visible) must be recomputed by a re-prefill."""
        if not self.spec.config.restart_mode:
            return False
        return any(ev.block.summary_end >= self._prefilled_len for ev in self._due)

    def on_row_released(self) -> None:
        """The row was freed without finishing (retraction): re-apply after re-prefill.

        The re-prefill covers every token seen so far, under the masks.
        """
        self._forget_applied()
        self._prefilled_len = self.total_len

    def _forget_applied(self) -> None:
        self.map = EMPTY
        self._due = deque(self._decided)  # `_due` is always a suffix of `_decided`

    # -------------------------------------------------------------- radix view

    def physical_ids(self) -> array:
        """The token ids of the KV row: every token fed, minus the applied spans."""
        return self.map.strip(self._ids)

    def radix_key(self, length: int) -> array:
        """How the Memento radix tree keys the first `length` slots of the row."""
        return radix_key(self._ids, self.map, length)

    def insert_limit(self, page_size: int = 1) -> int:
        """Row slots the tree may own: none past the end of a span that may still
        leave the row (the KV after it would change meaning when it does).

        With pages (`page_size` > 1) none of the page where such a span starts either:
        compaction then rewrites and frees only pages the request owns.
        """
        ends = [ev.end for ev in self._due] + self.tracker.pending_span_ends()
        limit = min(self.map.to_physical(e) for e in [self.total_len, *ends])
        if page_size == 1:
            return limit
        start = self.first_leaving_start()
        return (limit if start is None else min(limit, start)) // page_size * page_size

    def first_leaving_start(self) -> int | None:
        """Row slot where the first span that may still leave the row starts (decided and
        not applied, held back, or the open block's); None when no span may leave."""
        starts = ([self._due[0].start] if self._due else []) + self.tracker.pending_span_starts()
        return min((self.map.to_physical(s) for s in starts), default=None)

    def prospective_key(self) -> array:
        """For a request without KV: its key with every decided span already gone."""
        self.forget_adoption()
        return radix_key(self._ids, self._due_spans())

    def forget_adoption(self) -> None:
        """For a request without KV: undo an earlier match's adopted spans."""
        self._forget_applied()
        self._reused = (0, 0)

    def adopt_cached_prefix(self, matched: int, logical_limit: int, page_size: int = 1) -> int:
        """Take `matched` slots of `prospective_key()` from the tree, cut where exact.

        A cut may not fall inside a memento whose block it skipped (the memento's
        remaining tokens must attend to the block), nor past an unsettled span or
        `logical_limit`, and is a whole number of pages. Spans the cut covers are
        applied to the map at once; the rest are prefilled under the mask. Returns
        the reused slot count.
        """
        spans = self._due_spans()
        pending = [spans.to_physical(e) for e in self.tracker.pending_span_ends()]
        if page_size > 1:  # the tree may hold no page a span that can still leave starts in
            pending += [spans.to_physical(s) for s in self.tracker.pending_span_starts()]
        cut = min([matched, spans.physical_limit(logical_limit), *pending]) // page_size * page_size
        while True:
            covered = [ev for ev in self._due if spans.to_physical(ev.end) < cut]
            inside = [
                spans.to_physical(ev.end) for ev in covered
                if cut <= spans.to_physical(max(ev.trigger, ev.end))
            ]  # fmt: skip
            if not inside:
                break
            cut = min(inside) // page_size * page_size  # the span's own slot: stop before it
        logical = cut + sum(ev.size for ev in covered)
        for ev in covered:
            self.apply_eviction(ev)
            self._due.popleft()
        self._reused = (logical, len(covered))
        return cut

    def _due_spans(self) -> SpanMap:
        """The map once every decided span has left the row."""
        return self.map.plus((ev.start, ev.end) for ev in self._due)

    # --------------------------------------------------------------- admission

    def take_new_cycles(self) -> list[tuple[int, int]]:
        """(cycle tokens, tokens its eviction removes) of blocks the model closed since the
        last call. Blocks in the prompt are the client's, not the model's: not counted."""
        blocks = self.tracker.closed_blocks[self._cycles_reported :]
        self._cycles_reported += len(blocks)
        model_written = [b for b in blocks if b.summary_end >= self.prompt_len]
        return [(b.cycle_tokens, self.tracker.evicted_tokens_of(b)) for b in model_written]

    def note_admission(self, growth_bound: int | None) -> None:
        """The scheduler admitted the request reserving `growth_bound` (None: its own estimate)."""
        self._admission = None if growth_bound is None else (growth_bound, self._live)

    @property
    def admission_error(self) -> int | None:
        """Reserved minus actual growth since admission (>= 0 when the bound held)."""
        if self._admission is None:
            return None
        bound, live = self._admission
        return bound - (self._peak - live)

    def future_growth(self, remaining: int, bounds: CycleBounds | None) -> Growth | None:
        """The most live KV this request can still add; None where eviction will not
        shrink it (nothing learned yet, eviction off, restart_mode, after `</think>`)."""
        cfg = self.spec.config
        tracker = self.tracker
        if (
            bounds is None
            or not cfg.admission_estimate
            or not cfg.compact_on_summary_end
            or cfg.keep_last_n_blocks < 0
            or cfg.restart_mode
            or tracker.answering
            or tracker.phase is Phase.OUTSIDE
        ):
            return None
        kept_open = max(cfg.keep_last_n_blocks, int(cfg.keep_last_block_for_answer))
        return memento_growth(remaining, tracker.open_cycle_tokens, kept_open, bounds)

    # -------------------------------------------------------------------- stats

    def observe_row(self, tree_slots: int, own_slots: int) -> None:
        """The host's view of the KV row: slots shared through the tree, slots owned."""
        self._row_slots = (tree_slots, own_slots)

    def stats(self) -> MementoStats:
        return MementoStats(
            blocks_closed=len(self.tracker.closed_blocks),
            blocks_evicted=self._seen_by_stats,
            tokens_evicted=self._hidden_tokens,
            live_kv_tokens=self._live,
            peak_live_kv_tokens=self._peak,
            peak_kv_tokens_without_eviction=max(self.total_len - 1, self.prompt_len),
            anomalies=len(self.tracker.anomalies),
            reused_prompt_tokens=self._reused[0],
            reused_blocks=self._reused[1],
            tree_kv_slots=self._row_slots[0],
            own_kv_slots=self._row_slots[1],
            admission_growth_bound=None if self._admission is None else self._admission[0],
            admission_live_kv_tokens=None if self._admission is None else self._admission[1],
        )

    def _decide(self, ev: Eviction) -> None:
        if ev.size <= 0:
            return
        self._decided.append(ev)
        self._due.append(ev)

    def _observe_query(self, query: int) -> None:
        """Account the keys seen by the query at logical `query` (KV of 0..query)."""
        if query < self.prompt_len - 1:
            return
        decided = self._decided
        while self._seen_by_stats < len(decided) and decided[self._seen_by_stats].trigger < query:
            self._hidden_tokens += decided[self._seen_by_stats].size
            self._seen_by_stats += 1
        self._live = query + 1 - self._hidden_tokens
        self._peak = max(self._peak, self._live)
