"""Block tracker: a pure state machine from token ids to eviction decisions.

It sees every token of a sequence once, in order (prompt first, then each generated
token), and says which logical spans leave the KV cache and after which token.
It never raises on odd input. Malformed structure is recorded as an `Anomaly` and
the offending delimiter is treated as ordinary content, so nothing is evicted that
a well-formed reading would keep:

* a delimiter outside a tracked section (before the assistant turn when
  `require_assistant_section`): ignored;
* `<|block_start|>` inside an open block or summary (nesting): ignored;
* `<|block_end|>` without an open block, `<|summary_start|>` not right after a
  closed block (text in between is allowed), `<|summary_end|>` without an open
  summary: ignored;
* `<|block_start|>` while a closed block still waits for its summary: that block is
  abandoned (it never gets a memento, so it stays visible) and a new one opens;
* `</think>` or a new `<|im_start|>` while a block or summary is open: the open
  structure is abandoned and stays visible.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum, StrEnum

from memento_sglang.config import MementoSpec


class Phase(Enum):
    OUTSIDE = "outside"  # not in a tracked section
    THINKING = "thinking"  # tracked, between blocks
    IN_BLOCK = "in_block"
    AWAIT_SUMMARY = "await_summary"  # block closed, its memento not started yet
    IN_SUMMARY = "in_summary"


class AnomalyKind(StrEnum):
    OUTSIDE_SECTION = "delimiter outside a tracked assistant section"
    NESTED_BLOCK_START = "block_start inside an open block or summary"
    STRAY_BLOCK_END = "block_end without an open block"
    STRAY_SUMMARY_START = "summary_start not after a closed block"
    STRAY_SUMMARY_END = "summary_end without an open summary"
    BLOCK_WITHOUT_SUMMARY = "block abandoned before its summary"
    UNCLOSED_AT_SECTION_END = "block or summary still open when the section ended"


@dataclass(frozen=True, slots=True)
class Anomaly:
    position: int
    token_id: int
    kind: AnomalyKind


@dataclass(frozen=True, slots=True)
class ClosedBlock:
    """A block whose memento has closed; positions are logical token indices."""

    index: int
    block_start: int
    block_end: int
    summary_start: int
    summary_end: int
    #: where its cycle began: after the previous memento closed, or where tracking began
    cycle_start: int = -1

    @property
    def cycle_tokens(self) -> int:
        """The cycle's length: text before the block, the block, and its memento."""
        return self.summary_end + 1 - self.cycle_start


@dataclass(frozen=True, slots=True)
class Eviction:
    """`[start, end)` leaves the KV cache; queries at positions > `trigger` no longer see it."""

    block: ClosedBlock
    start: int
    end: int
    trigger: int

    @property
    def size(self) -> int:
        return self.end - self.start


class BlockTracker:
    """Feeds on token ids, yields `Eviction`s per the spec's keep/defer policy."""

    def __init__(self, spec: MementoSpec) -> None:
        self._ids = spec.ids
        self._cfg = spec.config
        self._phase = Phase.OUTSIDE if self._cfg.require_assistant_section else Phase.THINKING
        self._position = 0
        self._im_start_at: int | None = None
        self._since_im_start: list[int] = []
        self._block_start = -1
        self._block_end = -1
        self._summary_start = -1
        self._content_tokens = 0
        self._cycle_start = 0
        self._answering = False
        self._pending: deque[ClosedBlock] = deque()  # summarised, not evicted yet
        self._deferred: ClosedBlock | None = None  # keep_last_block_for_answer
        self.closed_blocks: list[ClosedBlock] = []
        self.anomalies: list[Anomaly] = []

    # ------------------------------------------------------------- properties

    @property
    def position(self) -> int:
        """Number of tokens fed so far (= logical position of the next token)."""
        return self._position

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def open_block_content_tokens(self) -> int:
        """Content tokens written in the currently open block (0 when none is open)."""
        return self._content_tokens if self._phase is Phase.IN_BLOCK else 0

    @property
    def open_cycle_tokens(self) -> int:
        """Tokens written since the last memento closed (or tracking began); 0 outside."""
        return 0 if self._phase is Phase.OUTSIDE else self._position - self._cycle_start

    @property
    def answering(self) -> bool:
        """After `</think>` in the current section: no block will leave the row any more."""
        return self._answering

    def evicted_tokens_of(self, block: ClosedBlock) -> int:
        """How many tokens the block's eviction removes, per the delimiter policy."""
        start, end = self._span(block.block_start, block.block_end)
        return end - start

    @property
    def block_budget_exhausted(self) -> bool:
        """True when `max_block_tokens` says the open block must end now."""
        budget = self._cfg.max_block_tokens
        return budget > 0 and self.open_block_content_tokens >= budget

    # ------------------------------------------------------------------ feeding

    def feed_many(self, token_ids: list[int] | tuple[int, ...]) -> list[Eviction]:
        out: list[Eviction] = []
        for tid in token_ids:
            out.extend(self.feed(tid))
        return out

    def feed(self, token_id: int) -> list[Eviction]:
        """Consume the token at logical position `self.position`; return what it evicts."""
        pos = self._position
        self._position += 1
        ids = self._ids

        if ids.im_start is not None and token_id == ids.im_start:
            self._end_section(pos, token_id)
            self._phase = Phase.OUTSIDE
            self._im_start_at = pos
            self._since_im_start = []
            self._answering = False
            return []
        if self._phase is Phase.OUTSIDE:
            return self._feed_outside(pos, token_id)
        if token_id == ids.think_end:
            self._end_section(pos, token_id)
            self._answering = True
            return []
        if token_id == ids.block_start:
            return self._on_block_start(pos, token_id)
        if token_id == ids.block_end:
            if self._phase is Phase.IN_BLOCK:
                self._block_end = pos
                self._phase = Phase.AWAIT_SUMMARY
            else:
                self._anomaly(pos, token_id, AnomalyKind.STRAY_BLOCK_END)
            return []
        if token_id == ids.summary_start:
            if self._phase is Phase.AWAIT_SUMMARY:
                self._summary_start = pos
                self._phase = Phase.IN_SUMMARY
            else:
                self._anomaly(pos, token_id, AnomalyKind.STRAY_SUMMARY_START)
            return []
        if token_id == ids.summary_end:
            if self._phase is Phase.IN_SUMMARY:
                return self._on_summary_end(pos)
            self._anomaly(pos, token_id, AnomalyKind.STRAY_SUMMARY_END)
            return []
        if self._phase is Phase.IN_BLOCK:
            self._content_tokens += 1
        return []

    # -------------------------------------------------------------- transitions

    def _feed_outside(self, pos: int, token_id: int) -> list[Eviction]:
        ids = self._ids
        if self._im_start_at is not None and self._role_ends_at(pos, token_id):
            self._phase = Phase.THINKING
            self._im_start_at = None
            self._cycle_start = pos + 1
        elif token_id in ids.delimiters:
            self._anomaly(pos, token_id, AnomalyKind.OUTSIDE_SECTION)
        return []

    def _role_ends_at(self, pos: int, token_id: int) -> bool:
        """Whether `token_id` completes the assistant role that starts 1 or 2 positions
        after `<|im_start|>` (the role may be several tokens: SmolLM2 writes "ass" "istant")."""
        role = self._ids.assistant or ()
        if self._im_start_at is None or pos - self._im_start_at > len(role) + 1:
            return False  # too far from the turn's start: the rest of the turn is not looked at
        self._since_im_start.append(token_id)
        first = pos - len(role) + 1
        return (
            bool(role)
            and first - self._im_start_at in (1, 2)
            and tuple(self._since_im_start[-len(role) :]) == role
        )

    def _on_block_start(self, pos: int, token_id: int) -> list[Eviction]:
        if self._phase in (Phase.IN_BLOCK, Phase.IN_SUMMARY):
            self._anomaly(pos, token_id, AnomalyKind.NESTED_BLOCK_START)
            return []
        if self._phase is Phase.AWAIT_SUMMARY:
            self._anomaly(pos, token_id, AnomalyKind.BLOCK_WITHOUT_SUMMARY)
        self._phase = Phase.IN_BLOCK
        self._block_start = pos
        self._content_tokens = 0
        out: list[Eviction] = []
        if self._deferred is not None:  # keep_last_block_for_answer: flush on the next block
            out.append(self._evict(self._deferred, trigger=pos))
            self._deferred = None
        return out

    def _on_summary_end(self, pos: int) -> list[Eviction]:
        block = ClosedBlock(
            index=len(self.closed_blocks),
            block_start=self._block_start,
            block_end=self._block_end,
            summary_start=self._summary_start,
            summary_end=pos,
            cycle_start=self._cycle_start,
        )
        self.closed_blocks.append(block)
        self._phase = Phase.THINKING
        self._cycle_start = pos + 1
        cfg = self._cfg
        if not cfg.compact_on_summary_end or cfg.keep_last_n_blocks < 0:
            return []
        if cfg.keep_last_block_for_answer:
            self._deferred = block
            return []
        self._pending.append(block)
        out = []
        while len(self._pending) > cfg.keep_last_n_blocks:
            out.append(self._evict(self._pending.popleft(), trigger=pos))
        return out

    def _end_section(self, pos: int, token_id: int) -> None:
        """`</think>` or a new turn: abandon open structure, keep a deferred block visible."""
        if self._phase in (Phase.IN_BLOCK, Phase.AWAIT_SUMMARY, Phase.IN_SUMMARY):
            self._anomaly(pos, token_id, AnomalyKind.UNCLOSED_AT_SECTION_END)
        if self._phase is not Phase.OUTSIDE:
            self._phase = Phase.THINKING
        self._deferred = None

    def pending_span_ends(self) -> list[int]:
        """Ends of spans that may still leave the cache: closed blocks held back
        (`keep_last_n_blocks`, `keep_last_block_for_answer`) and a block whose memento
        is not closed yet. KV after such an end may still change meaning."""
        ends = [self._span(b.block_start, b.block_end)[1] for b in self._held_blocks()]
        if self._evicts() and self._phase in (Phase.AWAIT_SUMMARY, Phase.IN_SUMMARY):
            ends.append(self._span(self._block_start, self._block_end)[1])
        return ends

    def pending_span_starts(self) -> list[int]:
        """Starts of spans that may still leave the cache: those of `pending_span_ends`,
        and the open block's (its end is not known yet). With paged KV the prefix tree
        stops before the page of the first of them."""
        starts = [self._span(b.block_start, b.block_end)[0] for b in self._held_blocks()]
        if self._evicts() and self._phase in (Phase.IN_BLOCK, Phase.AWAIT_SUMMARY, Phase.IN_SUMMARY):
            starts.append(self._span(self._block_start, self._block_start)[0])
        return starts

    def _held_blocks(self) -> list[ClosedBlock]:
        """Closed blocks still in the cache that may leave it later."""
        return [*self._pending, *([self._deferred] if self._deferred is not None else [])]

    def _evicts(self) -> bool:
        """Whether the block being written will leave the cache once its memento closes."""
        return self._cfg.compact_on_summary_end and self._cfg.keep_last_n_blocks >= 0

    def _span(self, block_start: int, block_end: int) -> tuple[int, int]:
        """The logical `[start, end)` a closed block leaves, per the delimiter policy."""
        if self._cfg.restart_mode or self._cfg.mask_delimiters:
            return block_start, block_end + 1
        return block_start + 1, block_end

    def _evict(self, block: ClosedBlock, trigger: int) -> Eviction:
        start, end = self._span(block.block_start, block.block_end)
        if self._cfg.restart_mode:
            # The paper's restart ablation: the memento's own KV is recomputed without
            # the block (delimiters included), so it is hidden from the memento on.
            trigger = block.summary_start - 1
        return Eviction(block=block, start=start, end=end, trigger=trigger)

    def _anomaly(self, pos: int, token_id: int, kind: AnomalyKind) -> None:
        self.anomalies.append(Anomaly(position=pos, token_id=token_id, kind=kind))
