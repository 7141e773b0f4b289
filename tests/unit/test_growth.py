"""The admission estimate: never above SGLang's, never below what a request really adds."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.growth import (
    CycleBounds,
    CycleStats,
    Growth,
    InFlight,
    RunningRow,
    memento_growth,
    pooled_growth,
    pooled_reservation,
)


@st.composite
def traces(draw):
    """Cycles that respect learned bounds: length <= C, kept share <= rho; the first is
    under way (`progress` tokens written, which are already live)."""
    cap = draw(st.integers(4, 60))
    rho = draw(st.sampled_from([0.05, 0.1, 0.2, 0.35, 0.5, 1.0]))
    keep_n = draw(st.integers(0, 2))
    cycles = []
    for _ in range(draw(st.integers(1, 8))):
        length = draw(st.integers(2, cap))
        kept = draw(st.integers(0, math.floor(rho * length)))
        cycles.append((length, kept))
    progress = draw(st.integers(0, cycles[0][0] - 1))
    tail = draw(st.integers(0, cap))  # text after the last cycle (cut by max_new_tokens)
    return CycleBounds(cap, rho), keep_n, cycles, progress, tail


def true_peak_growth(cycles, progress, keep_n, tail) -> tuple[int, int]:
    """Live KV added over the trace's remaining tokens, at its peak; and those tokens.

    A cycle's evicted part leaves when the memento `keep_n` cycles later closes."""
    live, peak, written = 0, 0, 0
    closed: list[int] = []  # evicted sizes of cycles still visible
    for i, (length, kept) in enumerate(cycles):
        start = progress if i == 0 else 0
        for _ in range(start, length):
            live += 1
            written += 1
            peak = max(peak, live)
        closed.append(length - kept)
        while len(closed) > keep_n:
            live -= closed.pop(0)
    live_tail = live
    for _ in range(tail):
        live_tail += 1
        written += 1
        peak = max(peak, live_tail)
    return peak, written


@settings(max_examples=400, deadline=None)
@given(traces(), st.integers(0, 300))
def test_estimate_bounds_the_true_growth_and_stays_below_stock(trace, extra):
    bounds, keep_n, cycles, progress, _ = trace
    peak, written = true_peak_growth(cycles, progress, keep_n, 0)
    for remaining in (written, written + extra):
        growth = memento_growth(remaining, progress, keep_n, bounds)
        assert growth.total >= peak, (growth, peak)
        assert growth.total <= remaining  # SGLang's own estimate is min(remaining, CLIP)
        assert 0 <= growth.open <= growth.total


@settings(max_examples=200, deadline=None)
@given(traces())
def test_estimate_is_continuous_when_a_block_closes(trace):
    """live + estimate does not rise when a memento closes: admission cannot flicker."""
    bounds, _, cycles, _, _ = trace
    remaining = 10 * bounds.cycle_tokens
    length, kept = cycles[0]
    before = memento_growth(remaining, length, 0, bounds)  # at summary_end, block still live
    after = memento_growth(remaining, 0, 0, bounds)  # the next token: block gone, new cycle
    assert after.total - (length - kept) <= before.total


def test_cycle_stats_learn_a_high_quantile_and_stay_cold_until_enough():
    stats = CycleStats(window=100, min_cycles=8, quantile=0.9)
    for n in range(7):
        stats.observe(100 + n, 90)
    assert stats.bounds() is None
    for n in range(13):
        stats.observe(100 + 7 + n, 80)
    bounds = stats.bounds()
    assert bounds.cycle_tokens == 117  # 18th of 20 sorted lengths 100..119
    assert bounds.kept_share >= 0.15
    stats.observe(0, 0)  # malformed: ignored
    stats.observe(10, 11)
    assert len(stats) == 20


def test_remaining_zero_reserves_nothing():
    assert memento_growth(0, 5, 0, CycleBounds(50, 0.2)).total == 0


def test_back_off_uses_the_worst_cycles_seen_until_enough_close_again():
    stats = CycleStats(window=40, min_cycles=4, quantile=0.5)
    for length, evicted in [(10, 8), (10, 8), (20, 10), (10, 8), (10, 8)]:
        stats.observe(length, evicted)
    normal = stats.bounds()
    assert normal.cycle_tokens == 10 and normal.longest_cycle == 20
    assert normal.kept_share == (2 + 2 + 10 + 2 + 2) / 60
    stats.back_off()
    cautious = stats.bounds()
    assert (cautious.cycle_tokens, cautious.kept_share) == (20, 0.5)
    for _ in range(10):  # window // 4 cycles close: the normal bounds apply again
        stats.observe(10, 8)
    assert not stats.cautious and stats.bounds().cycle_tokens == 10


def test_a_cycle_longer_than_the_typical_bound_still_gets_room():
    bounds = CycleBounds(cycle_tokens=10, kept_share=0.2, longest_cycle=30)
    assert memento_growth(100, 4, 0, bounds).open == 6
    assert memento_growth(100, 12, 0, bounds).open == 18  # up to the longest seen
    assert memento_growth(100, 40, 0, bounds).open == 0


@st.composite
def running_rows(draw):
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        remaining = draw(st.integers(0, 400))
        open_part = draw(st.integers(0, remaining))
        rate = draw(st.sampled_from([0.0, 0.05, 0.15, 0.5, 1.0]))
        full = open_part + math.ceil(rate * (remaining - open_part))
        total = draw(st.integers(0, full))  # SGLang's clip can cut it
        own = draw(st.integers(0, 300))
        rows.append(RunningRow(own=own, growth=Growth(open_part, total, rate), remaining=remaining))
    return rows


def brute_force_peak(rows: list[RunningRow]) -> float:
    """Step by step: running rows have grown by `after(s)`; finished ones freed `own`."""
    horizon = max((r.remaining for r in rows), default=0)
    best = 0.0
    for s in range(horizon + 1):
        held = sum(r.growth.after(s) for r in rows if s <= r.remaining)
        freed = sum(r.own for r in rows if s > r.remaining)
        best = max(best, held - freed)
    return best


@settings(max_examples=400, deadline=None)
@given(running_rows())
def test_pooled_growth_is_the_peak_of_the_summed_paths(rows):
    pooled = pooled_growth(rows)
    assert pooled == math.ceil(brute_force_peak(rows) - 1e-6)
    assert pooled <= sum(r.growth.total for r in rows)  # never above summing each bound


def test_rows_that_finish_first_make_room_for_the_rest():
    early = RunningRow(own=100, growth=Growth(10, 20, 0.1), remaining=50)
    late = RunningRow(own=100, growth=Growth(10, 40, 0.1), remaining=310)
    # Both have grown 14 at step 50, when `early` finishes and frees 100 + 14 before
    # `late` reaches its 40: together they never need more than 28 + nothing.
    assert pooled_growth([early, late]) == 28
    assert sum(r.growth.total for r in (early, late)) == 60  # SGLang-style sum of bounds
    assert pooled_growth([late]) == 40
    assert pooled_growth([]) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 120), min_size=1, max_size=40))
def test_in_flight_is_the_open_part_at_a_random_step(lengths):
    """Cycles back to back: at every step, how far the cycle under way has come."""
    along = [t for n in lengths for t in range(n)]
    mean = sum(along) / len(along)
    flight = InFlight.of(lengths)
    assert math.isclose(flight.mean, mean, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(
        flight.variance, sum((t - mean) ** 2 for t in along) / len(along), rel_tol=1e-6, abs_tol=1e-6
    )


@settings(max_examples=300, deadline=None)
@given(running_rows(), st.floats(0.0, 4.0), st.data())
def test_the_reservation_is_never_above_the_joint_bound(rows, sigmas, data):
    with_expectations = [
        RunningRow(
            r.own,
            Growth(
                r.growth.open,
                r.growth.total,
                r.growth.rate,
                expected_open=data.draw(st.floats(-100.0, float(r.growth.open))),
                open_variance=data.draw(st.floats(0.0, 1e4)),
                expected_rest=data.draw(st.floats(0.0, 500.0)),
            ),
            r.remaining,
        )
        for r in rows
    ]
    bound = pooled_growth(with_expectations)
    assert pooled_reservation(with_expectations, None) == bound
    if rows:
        assert pooled_reservation(rows, sigmas) == bound  # no expectation known: the bound
    assert pooled_reservation(with_expectations, sigmas) <= bound


Cycle = tuple[int, int]  # (length, tokens the cycle leaves in the row)


def _true_joint_peak(rng: random.Random, rows: list[tuple[int, int, int]], cycles: list[Cycle]) -> int:
    """Step by step: each row finishes its cycle under way (drawn among the cycles longer
    than its progress), then writes fresh cycles; a closed cycle leaves its kept tokens."""
    paths = []
    for progress, remaining, own in rows:
        length, kept = rng.choice([c for c in cycles if c[0] > progress])
        grown, along, path = 0, progress, []
        for _ in range(remaining):
            grown += 1
            along += 1
            path.append(grown)
            if along == length:  # the memento closes: the block leaves
                grown -= length - kept
                along = 0
                length, kept = rng.choice(cycles)
        paths.append((path, own))
    horizon = max(len(path) for path, _ in paths)
    peak = 0
    for s in range(horizon):
        held = sum(path[s] if s < len(path) else -own for path, own in paths)
        peak = max(peak, held)
    return peak


def _learned(rng: random.Random, kept: Callable[[], int]) -> tuple[list[Cycle], CycleBounds]:
    cycles = [(rng.randint(40, 120), kept()) for _ in range(400)]
    stats = CycleStats()
    for length, k in cycles:
        stats.observe(length, length - k)
    bounds = stats.bounds()
    assert bounds is not None and bounds.in_flight is not None
    return cycles, bounds


@pytest.mark.parametrize(
    "seed, kept, longest, min_saved",
    [
        (7, lambda r: 14, 900, 30),
        (7, lambda r: r.randint(0, 28), 3000, 2),
        (11, lambda r: r.randint(0, 28), 3000, 2),
    ],
    ids=["fixed-mementos", "varied-mementos-long", "varied-mementos-long-2"],
)
def test_the_bet_covers_the_batch_with_high_probability(seed, kept, longest, min_saved):
    """Cycles drawn from what the server learned: the 3-sigma reservation of 32 rows at
    random points of their cycles is below their joint bound and still covers their true
    joint growth (its maximum over every step) in nearly every batch, also when
    mementos vary and rows run long (their noise adds up over many cycles)."""
    rng = random.Random(seed)
    cycles, bounds = _learned(rng, lambda: kept(rng))
    longest_cycle = max(length for length, _ in cycles)
    covered, saved = 0, []
    for _ in range(100):
        state = []
        while len(state) < 32:
            length, _ = rng.choice(cycles)  # a row met at a random step: length-biased
            if rng.random() < length / longest_cycle:
                state.append((rng.randrange(length), rng.randint(50, longest), rng.randint(20, 200)))
        rows = [
            RunningRow(own, memento_growth(remaining, progress, 0, bounds), remaining)
            for progress, remaining, own in state
        ]
        reserved = pooled_reservation(rows, 3.0, bounds.in_flight.rate_variance)
        covered += reserved >= _true_joint_peak(rng, state, cycles)
        saved.append(pooled_growth(rows) - reserved)
    assert covered >= 95  # at least 95% of batches
    assert sum(saved) / len(saved) > 32 * min_saved  # slots a row below the bound


def test_rows_in_step_are_reserved_for_their_blocks_closing_together():
    """Requests that started together write their blocks in step: all of them are at
    the same point of the same cycle, and their rows peak together just before the
    blocks close. The expectation sees that peak (each row runs its expected rest)."""
    rng = random.Random(11)
    _, bounds = _learned(rng, lambda: 14)
    assert bounds.in_flight is not None
    for progress in (0, 10, 40):
        rows = [RunningRow(30, memento_growth(600, progress, 0, bounds), 600) for _ in range(16)]
        rest = bounds.in_flight.rest(progress)
        assert rest is not None
        assert pooled_reservation(rows, 3.0) >= 16 * rest


def test_after_a_retraction_there_is_no_bet():
    stats = CycleStats(window=40)
    for n in range(8, 48):
        stats.observe(n, n - 2)
    assert stats.bounds().in_flight is not None
    stats.back_off()
    cautious = stats.bounds()
    assert cautious.in_flight is None
    assert memento_growth(100, 3, 0, cautious).expected_open is None


def test_rows_in_step_move_together():
    """Rows at the same point of their cycles (requests that started together on one
    trace shape) deviate together: their margin is n standard deviations, not sqrt(n);
    rows at different points keep the sqrt(n) margin."""
    rng = random.Random(5)
    _, bounds = _learned(rng, lambda: 14)
    in_step = [RunningRow(30, memento_growth(600, 10, 0, bounds), 600) for _ in range(16)]
    spread = [RunningRow(30, memento_growth(600, 10 + i, 0, bounds), 600) for i in range(16)]

    def margin(rows):
        return pooled_reservation(rows, 1.0) - pooled_reservation(rows, 0.0)

    sd = math.sqrt(in_step[0].growth.open_variance)
    assert margin(in_step) == pytest.approx(16 * sd, abs=2) or pooled_reservation(
        in_step, 1.0
    ) == pooled_growth(in_step)
    assert margin(spread) < 6 * sd  # about 4 sd: sqrt(16)
