"""How much KV a Memento request can still add: the scheduler's admission estimate.

SGLang budgets a request's future KV as `min(max_new_tokens - output, CLIP)`
tokens, as if every generated token stayed in the cache. A Memento request keeps
only its mementos: each *cycle* (the text before a block, the block, its memento)
adds its full length while it is open and leaves only the memento behind when it
closes. So the live KV a request can still add over its `remaining` tokens is
bounded by

    open + kept_share * (remaining - open)

where `open` is what the cycles that are still open can add (the rest of the
current cycle, plus `keep_last_n_blocks` whole cycles that stay visible) and
`kept_share` the share of a cycle that stays in the row. Both come from the cycles
the model wrote on this server (`CycleStats`): a high percentile of cycle length and
the kept share over many cycles. It is a bound for every trace whose cycles stay
within them (see `tests/unit/test_growth.py`), and an estimate otherwise; after a
retraction the worst figures seen apply for a while. Pure: no SGLang, no torch.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate


@dataclass(frozen=True, slots=True)
class InFlight:
    """Open cycles, over the cycles closed on this server.

    `mean` and `variance`: the tokens a row has written in its cycle under way at a
    random step. A cycle of length L is under way for L steps, so it is picked in
    proportion to L (a length-biased draw) and is then 0..L-1 tokens along.
    `rest(progress)`: how long a cycle already `progress` tokens along still runs, on
    average (over the cycles seen that were longer). `kept_noise`: the variance of what
    one cycle leaves around `kept_share * length` (mementos vary); `rate_variance`: the
    variance of the learned kept share itself, an error every row shares.
    """

    mean: float
    variance: float
    cycle_variance: float
    cycle_mean: float = 1.0
    kept_noise: float = 0.0
    rate_variance: float = 0.0
    sorted_lengths: tuple[int, ...] = field(default=(), repr=False)
    suffix_sums: tuple[int, ...] = field(default=(), repr=False)  # [i] = sum(sorted_lengths[i:])

    @classmethod
    def of(cls, lengths: deque[int] | list[int], kept: deque[int] | list[int] | None = None) -> InFlight:
        steps = sum(lengths)
        mean = sum(n * (n - 1) / 2 for n in lengths) / steps
        square = sum((n - 1) * n * (2 * n - 1) / 6 for n in lengths) / steps
        cycle_mean = steps / len(lengths)
        cycle_variance = sum((n - cycle_mean) ** 2 for n in lengths) / len(lengths)
        kept_noise = 0.0
        if kept is not None:
            share = sum(kept) / steps
            kept_noise = sum((k - share * n) ** 2 for k, n in zip(kept, lengths, strict=True)) / len(lengths)
        rate_variance = kept_noise / (len(lengths) * cycle_mean**2)
        ordered = tuple(sorted(lengths))
        suffix = tuple(accumulate(reversed(ordered)))[::-1] + (0,)
        return cls(
            mean,
            max(0.0, square - mean * mean),
            cycle_variance,
            cycle_mean,
            kept_noise,
            rate_variance,
            ordered,
            suffix,
        )

    def rest(self, progress: int) -> float | None:
        first = bisect_right(self.sorted_lengths, progress)
        longer = len(self.sorted_lengths) - first
        if longer == 0:
            return None
        return self.suffix_sums[first] / longer - progress


@dataclass(frozen=True, slots=True)
class CycleBounds:
    """What the server has learned about cycles: a typical long cycle, the longest one
    seen, and the share of a cycle that stays in the row; `in_flight` (None while
    cautious or when unknown) gives the expectation that the running batch is reserved on."""

    cycle_tokens: int
    kept_share: float
    longest_cycle: int = 0
    in_flight: InFlight | None = None


@dataclass(frozen=True, slots=True)
class Growth:
    """A request's future KV growth: `total` tokens, of which `open` belong to cycles
    already under way (they will be written unless the request stops); after those,
    the row grows by at most `rate` tokens per token written (the kept share)."""

    open: int
    total: int
    rate: float = 1.0
    #: the expectation (None: unknown, the bound stands): the cycle under way runs
    #: `expected_rest` more tokens (the row grows by each), then its block leaves and
    #: the row holds `expected_open + rate * tokens` more than now: `expected_open` is
    #: the mean in-flight part of a cycle minus what the current one had written
    #: (negative when its block frees more than a typical open cycle holds)
    expected_open: float | None = None
    open_variance: float = 0.0
    expected_rest: float = 0.0

    def after(self, tokens: int) -> float:
        """The most the row can have grown after `tokens` more tokens."""
        grown = min(tokens, self.open) + self.rate * max(0, tokens - self.open)
        return min(float(self.total), grown)


class CycleStats:
    """The last `window` cycles closed on this server; `bounds()` is None while cold.

    Normally the cycle bound is the `quantile` of cycle lengths and the kept share is
    the share over all those cycles (long traces average many cycles). After a
    retraction (`back_off()`), until `window // 4` more cycles have closed, both are the
    worst seen: the longest cycle and the largest per-cycle share.
    """

    def __init__(self, window: int = 512, min_cycles: int = 8, quantile: float = 0.95) -> None:
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self._lengths: deque[int] = deque(maxlen=window)
        self._kept: deque[int] = deque(maxlen=window)
        self._min_cycles = min_cycles
        self._quantile = quantile
        self._back_off_cycles = max(1, window // 4)
        self._cautious_for = 0  # cycles still to close before the normal bounds apply again
        self._bounds: CycleBounds | None = None
        self._stale = True

    def observe(self, cycle_tokens: int, evicted_tokens: int) -> None:
        if cycle_tokens <= 0 or not 0 <= evicted_tokens <= cycle_tokens:
            return  # malformed structure: the tracker already recorded an anomaly
        self._lengths.append(cycle_tokens)
        self._kept.append(cycle_tokens - evicted_tokens)
        self._cautious_for = max(0, self._cautious_for - 1)
        self._stale = True

    def back_off(self) -> None:
        """A request admitted on these bounds was retracted: be conservative for a while."""
        self._cautious_for = self._back_off_cycles
        self._stale = True

    @property
    def cautious(self) -> bool:
        return self._cautious_for > 0

    def __len__(self) -> int:
        return len(self._lengths)

    def bounds(self) -> CycleBounds | None:
        if self._stale:
            self._bounds = self._compute()
            self._stale = False
        return self._bounds

    def _compute(self) -> CycleBounds | None:
        if len(self._lengths) < self._min_cycles:
            return None
        longest = max(self._lengths)
        if self.cautious:
            share = max(k / n for k, n in zip(self._kept, self._lengths, strict=True))
            return CycleBounds(cycle_tokens=longest, kept_share=share, longest_cycle=longest)
        return CycleBounds(
            cycle_tokens=_quantile(self._lengths, self._quantile),
            kept_share=sum(self._kept) / sum(self._lengths),
            longest_cycle=longest,
            in_flight=InFlight.of(self._lengths, self._kept),
        )


def _quantile(values: deque, q: float):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def memento_growth(remaining: int, open_cycle_tokens: int, keep_last_n_blocks: int,
                   bounds: CycleBounds) -> Growth:  # fmt: skip
    """The most live KV a request adds over its next `remaining` tokens, if its cycles
    stay within `bounds`.

    `open_cycle_tokens` is how far the current cycle has come. While it and the
    `keep_last_n_blocks` cycles after it are open, every token stays; after that,
    each cycle leaves `kept_share` of itself. A cycle already longer than the typical
    bound is given room up to the longest cycle seen.
    """
    if remaining <= 0:
        return Growth(0, 0, bounds.kept_share)
    cycle = bounds.cycle_tokens
    if open_cycle_tokens >= cycle:
        cycle = max(cycle, bounds.longest_cycle)
    open_part = max(0, cycle - open_cycle_tokens)
    open_part = min(remaining, open_part + max(0, keep_last_n_blocks) * bounds.cycle_tokens)
    total = open_part + math.ceil(bounds.kept_share * (remaining - open_part))
    expected = _expected_open(open_cycle_tokens, keep_last_n_blocks, remaining, bounds)
    if expected is None:
        return Growth(open_part, min(remaining, total), bounds.kept_share)
    return Growth(open_part, min(remaining, total), bounds.kept_share, *expected)


def _expected_open(
    progress: int, keep_last_n_blocks: int, remaining: int, bounds: CycleBounds
) -> tuple[float, float, float] | None:
    """The expectation of a row's open part: (level relative to now, its variance, the
    rest of the cycle under way). None for a cycle already past the typical bound: its
    end is not known.

    After the cycle under way closes (in `rest` tokens) the row runs fresh cycles: a
    delayed renewal, whose expected number of closes by step `s` is
    `(s - rest + E[in flight]) / E[L]`, each leaving `kept_share * E[L]` on average. The
    row then holds `E[in flight] - progress + kept_share * (s - rest + E[in flight])`
    more than now; `keep_last_n_blocks` visible cycles are replaced by as many new ones.
    The variance adds each future cycle's kept noise over the `remaining` tokens.
    """
    flight = bounds.in_flight
    if flight is None or progress >= bounds.cycle_tokens:
        return None
    rest = flight.rest(progress)
    if rest is None:
        return None
    level = flight.mean - progress + bounds.kept_share * (flight.mean - rest)
    variance = (
        flight.variance
        + max(0, keep_last_n_blocks) * flight.cycle_variance
        + remaining / flight.cycle_mean * flight.kept_noise
    )
    return level, variance, rest


@dataclass(frozen=True, slots=True)
class RunningRow:
    """A running request as admission sees it: the slots it frees when it finishes
    (`own`: its row minus what the tree shares), its growth bound, and the tokens it may
    still write (`remaining`: it finishes after at most that many decode steps)."""

    own: int
    growth: Growth
    remaining: int


def pooled_growth(rows: list[RunningRow]) -> int:
    """The most KV that `rows` together can add at any future decode step.

    Every running request writes one token per decode step, so after `s` steps row
    `i` has grown by at most `growth.after(s)` while it runs, and after its
    `remaining` steps it has finished and freed `own` plus all it grew. Summing each
    row's own bound (what SGLang does) assumes every row peaks at once; requests at
    different stages do not, and those that finish first free room for the rest.
    The maximum of the sum is reached just before a row finishes (between those
    moments it only grows), so it is evaluated there: a sweep over finishing steps
    with running sums of the rows' linear pieces, O(n log n).
    """
    return math.ceil(_peak((change for row in rows for change in _piece_changes(row)), len(rows)) - 1e-6)


def _peak(row_changes: Iterable[tuple[float, bool, float, float]], rows: int) -> float:
    """The maximum over steps of a sum of `rows` piecewise linear paths that start at 0
    with slope 1 each and only fall where a change is flagged (a row finishes, or its
    block leaves): evaluated just before each flagged change.

    Each change is (step, flagged, d_intercept, d_slope); the sum is kept as
    intercept + slope * s and the changes are applied in step order.
    """
    changes = sorted(row_changes, key=lambda c: (c[0], c[1]))
    intercept, slope, peak = 0.0, float(rows), 0.0
    for k, (step, flagged, d_intercept, d_slope) in enumerate(changes):
        if flagged and (k == 0 or changes[k - 1][:2] != (step, True)):
            peak = max(peak, intercept + slope * step)  # the sum just before rows fall here
        intercept += d_intercept
        slope += d_slope
    return peak


def pooled_reservation(
    rows: list[RunningRow], margin_sigmas: float | None, rate_variance: float = 0.0
) -> int:
    """What the running batch is reserved: its joint bound (`pooled_growth`), or, with
    `margin_sigmas`, at most its expected joint growth plus that many standard
    deviations of it.

    The bound keeps a p95-long cycle open in every row at once. Over many rows that is
    rare: rows are at different points of their cycles, each closed block leaves, and
    the batch grows by the kept share on average (`Growth.expected_open`). The spread of
    the rows' own noise grows like sqrt(n) where the bound's margin grows like n; the
    learned kept share's error (`rate_variance`) is common to all rows and adds up
    linearly. A bet that loses makes SGLang retract a row, which keeps its work (the
    Memento radix cache), and the estimator turns cautious (`back_off`: no
    expectations until enough cycles closed).
    """
    bound = pooled_growth(rows)
    bet = expected_reservation(rows, margin_sigmas, rate_variance)
    return bound if bet is None else min(bound, bet)


def expected_reservation(
    rows: list[RunningRow], margin_sigmas: float | None, rate_variance: float = 0.0
) -> int | None:
    """The bet alone (see `pooled_reservation`): the rows' expected joint growth plus
    `margin_sigmas` standard deviations; None when there is no bet to make."""
    if margin_sigmas is None or all(r.growth.expected_open is None for r in rows):
        return None
    expected_rows = [r for r in rows if r.growth.expected_open is not None]
    shared = rate_variance * sum(r.remaining for r in expected_rows) ** 2
    expected = _peak((change for r in rows for change in _expected_changes(r)), len(rows))
    return math.ceil(expected + margin_sigmas * math.sqrt(_row_noise(expected_rows) + shared) - 1e-6)


def _row_noise(rows: list[RunningRow]) -> float:
    """The variance of the rows' summed growth. Rows at the same point of their cycle
    (requests that started together on the same trace shape) move together: their
    deviations add up (the square of the summed deviations), not their variances."""
    in_step: dict[tuple[float, float], float] = {}
    for r in rows:
        key = (round(r.growth.expected_rest, 6), round(r.growth.expected_open or 0.0, 6))
        in_step[key] = in_step.get(key, 0.0) + math.sqrt(r.growth.open_variance)
    return sum(deviation**2 for deviation in in_step.values())


def _expected_changes(row: RunningRow) -> list[tuple[float, bool, float, float]]:
    """`row`'s expected path: one token per step until its cycle under way closes
    (`expected_rest`), then `expected_open + rate * s` (its block left, a typical
    open cycle is under way); when it finishes, all it grew and `own` are freed. Rows
    in step (traces that start together) close their blocks together: their summed
    peak just before those closes is evaluated too. A row with no expectation (its
    cycle is already longer than the bound) keeps its bound's path."""
    g = row.growth
    if g.expected_open is None:
        return _piece_changes(row)
    end = float(row.remaining)
    closes = min(g.expected_rest, end)
    changes = []
    intercept, slope = 0.0, 1.0
    if closes < end:
        changes.append((closes, True, g.expected_open, g.rate - 1.0))
        intercept, slope = g.expected_open, g.rate
    changes.append((end, True, -float(row.own) - intercept, -slope))
    return changes


def _piece_changes(row: RunningRow) -> list[tuple[float, bool, float, float]]:
    """`row`'s growth as changes of (intercept, slope) from the start's (0, 1): at
    `open` the slope becomes `rate`, where it reaches `total` it stays, and when it
    finishes it has freed `own` plus everything it grew."""
    g = row.growth
    end = float(row.remaining)
    total = float(min(g.total, row.remaining))
    changes: list[tuple[float, bool, float, float]] = []
    intercept, slope = 0.0, 1.0

    def becomes(step: float, new_intercept: float, new_slope: float, finishes: bool = False) -> None:
        nonlocal intercept, slope
        changes.append((step, finishes, new_intercept - intercept, new_slope - slope))
        intercept, slope = new_intercept, new_slope

    if total <= g.open:
        cap_at = total
    else:
        if g.open < end:
            becomes(float(g.open), g.open * (1.0 - g.rate), g.rate)
        cap_at = g.open + (total - g.open) / g.rate if g.rate > 0 else math.inf
    if cap_at < end:
        becomes(cap_at, total, 0.0)
    becomes(end, -float(row.own), 0.0, finishes=True)
    return changes
