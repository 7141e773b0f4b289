"""Segmentation: exact against brute force, feasible, covering; and better than the reference's DP."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memento_sglang.data import segment as segment_module
from memento_sglang.data.segment import Block, objective, segment


def blocks_of(starts: list[int], n: int) -> list[Block]:
    bounds = [*starts, n]
    return [(bounds[b], bounds[b + 1] - 1) for b in range(len(starts))]


def all_segmentations(n: int):
    for mask in range(1 << (n - 1)):
        yield blocks_of([0] + [i + 1 for i in range(n - 1) if mask >> i & 1], n)


def feasible(blocks: list[Block], tokens: list[int], min_tokens: int, max_sentences: int | None) -> bool:
    return all(
        sum(tokens[a : b + 1]) >= min_tokens and (max_sentences is None or b - a + 1 <= max_sentences)
        for a, b in blocks
    )


def brute_force(tokens, scores, min_tokens, penalty, max_sentences) -> float | None:
    """The best objective over every feasible segmentation, or None when none is feasible."""
    values = [
        objective(blocks, tokens, scores, penalty)
        for blocks in all_segmentations(len(tokens))
        if feasible(blocks, tokens, min_tokens, max_sentences)
    ]
    return max(values) if values else None


def reference_greedy(tokens, scores, min_tokens, penalty) -> list[int] | None:
    """The reference pipeline's DP: one partial per (sentences, blocks), the best by the objective
    of the prefix as if it were the whole trace. Returns block starts, or None."""
    n = len(tokens)
    best: dict[tuple[int, int], list[int]] = {
        (i, 1): [0] for i in range(1, n + 1) if sum(tokens[:i]) >= min_tokens
    }
    for k in range(2, n + 1):
        for i in range(1, n + 1):
            kept: tuple[float, list[int]] | None = None
            for j in range(1, i):
                if (j, k - 1) not in best or sum(tokens[j:i]) < min_tokens:
                    continue
                starts = [*best[(j, k - 1)], j]
                value = objective(blocks_of(starts, i), tokens[:i], scores[: i - 1], penalty)
                if kept is None or value > kept[0]:
                    kept = (value, starts)
            if kept is not None:
                best[(i, k)] = kept[1]
    finals = [starts for (i, _), starts in best.items() if i == n]
    return max(finals, key=lambda s: objective(blocks_of(s, n), tokens, scores, penalty), default=None)


def assert_covers(blocks: list[Block], n: int) -> None:
    assert blocks[0][0] == 0 and blocks[-1][1] == n - 1
    for (_, last), (first, _) in zip(blocks, blocks[1:], strict=False):
        assert first == last + 1
    assert all(a <= b for a, b in blocks)


scores_kinds = st.sampled_from(["int", "half", "float"])


@st.composite
def problems(draw, max_n: int = 9):
    n = draw(st.integers(1, max_n))
    tokens = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    kind = draw(scores_kinds)
    if kind == "int":
        scores = draw(st.lists(st.integers(0, 3), min_size=n - 1, max_size=n - 1))
    elif kind == "half":
        scores = [h / 2 for h in draw(st.lists(st.integers(-2, 6), min_size=n - 1, max_size=n - 1))]
    else:
        scores = draw(
            st.lists(st.floats(-1, 3, allow_nan=False, allow_infinity=False), min_size=n - 1, max_size=n - 1)
        )
    min_tokens = draw(st.sampled_from([0, 1, 10, 40, 80, 200]))
    penalty = draw(st.sampled_from([0.0, 0.5, 2.0]))
    max_sentences = draw(st.sampled_from([None, None, 1, 2, 3]))
    return tokens, [float(s) for s in scores], min_tokens, penalty, max_sentences


# ------------------------------------------------------------------------------ exactness


@settings(max_examples=400, deadline=None)
@given(problems())
def test_matches_brute_force(problem) -> None:
    tokens, scores, min_tokens, penalty, max_sentences = problem
    n = len(tokens)
    blocks = segment(
        tokens,
        scores,
        min_block_tokens=min_tokens,
        variance_penalty=penalty,
        max_block_sentences=max_sentences,
    )
    assert_covers(blocks, n)
    best = brute_force(tokens, scores, min_tokens, penalty, max_sentences)
    if best is None or n == 1:
        assert blocks == [(0, n - 1)]
        return
    assert feasible(blocks, tokens, min_tokens, max_sentences)
    assert objective(blocks, tokens, scores, penalty) == pytest.approx(best, abs=1e-9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(20, 70), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.5, 1.5]))
def test_frontier_solver_agrees_with_grid_solver(n, seed, penalty) -> None:
    """Both exact solvers on the same grid scores, sizes brute force cannot reach (and sets big
    enough for the frontier's sample thinning to run)."""
    rng = random.Random(seed)
    tokens = [rng.randint(5, 40) for _ in range(n)]
    scores = [rng.randint(0, 6) / 2 for _ in range(n - 1)]
    kwargs = dict(min_block_tokens=rng.choice([30, 60, 100]), variance_penalty=penalty)
    grid = segment(tokens, scores, **kwargs)
    original = segment_module._quantize
    segment_module._quantize = lambda _scores: None
    try:
        frontier = segment(tokens, scores, **kwargs)
    finally:
        segment_module._quantize = original
    assert objective(frontier, tokens, scores, penalty) == pytest.approx(
        objective(grid, tokens, scores, penalty), abs=1e-9
    )
    assert frontier == grid  # same tie-breaking on both paths


def brute_pareto(s: np.ndarray, q: np.ndarray) -> set[tuple[float, int]]:
    points = set(zip(s.tolist(), q.tolist(), strict=True))
    return {(a, b) for a, b in points if not any((c >= a and d <= b) and (c, d) != (a, b) for c, d in points)}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60)), min_size=1, max_size=600))
def test_pareto_keeps_exactly_the_front(points) -> None:
    s = np.array([float(a) for a, _ in points])
    q = np.array([b for _, b in points], dtype=np.int64)
    kept = segment_module._pareto(s, q)
    front = list(zip(s[kept].tolist(), q[kept].tolist(), strict=True))
    assert len(front) == len(set(front))  # one of each equal point
    assert set(front) == brute_pareto(s, q)
    assert all(
        points.index((int(a), b)) == i for (a, b), i in zip(front, kept, strict=True)
    )  # the first kept


# ------------------------------------------------------------- the reference DP's heuristic


def test_exact_beats_the_reference_dp() -> None:
    """One partial per (sentences, blocks) drops the prefix the optimum extends.

    At (4 sentences, 2 blocks) the reference keeps [100 | 500 100 800] (score 2, CV of a
    two-block prefix) over [100 500 100 | 800]; the best four-block segmentation needs the latter.
    """
    tokens, scores = [100, 500, 100, 800, 800, 800], [2.0, 1.0, 1.0, 2.0, 2.0]
    greedy = reference_greedy(tokens, scores, 100, 0.5)
    assert greedy == [0, 1, 4, 5]
    exact = segment(tokens, scores, min_block_tokens=100, variance_penalty=0.5)
    assert exact == [(0, 2), (3, 3), (4, 4), (5, 5)]
    greedy_value = objective(blocks_of(greedy, 6), tokens, scores, 0.5)
    exact_value = objective(exact, tokens, scores, 0.5)
    assert greedy_value == pytest.approx(1.2030330219)
    assert exact_value == pytest.approx(1.2220636967)
    assert exact_value > greedy_value
    assert exact_value == pytest.approx(brute_force(tokens, scores, 100, 0.5, None))


# ------------------------------------------------------------------------- edge cases


def test_infeasible_is_one_block() -> None:
    assert segment([50, 50, 50], [3.0, 3.0], min_block_tokens=200) == [(0, 2)]
    # feasible by tokens, but no block may hold 2 sentences and every single one is too small
    assert segment([150, 150, 150], [3.0, 3.0], min_block_tokens=200, max_block_sentences=1) == [(0, 2)]


def test_sizes_zero_and_one() -> None:
    assert segment([], []) == []
    assert segment([500], []) == [(0, 0)]


def test_ties_prefer_fewer_blocks_then_earlier_cuts() -> None:
    assert segment([100] * 5, [0.0] * 4, min_block_tokens=100) == [(0, 4)]  # every value is 0
    # two 2-block segmentations, same score and the same CV: the earlier cut wins
    tokens, scores = [10] * 5, [0.0, 3.0, 3.0, 0.0]
    for penalty in (0.0, 0.5):
        assert segment(tokens, scores, min_block_tokens=20, variance_penalty=penalty) == [(0, 1), (2, 4)]


def test_equal_blocks_and_scores() -> None:
    # k equal blocks, every boundary 1: (k - 1) / k, best with the most blocks
    assert segment([100] * 4, [1.0] * 3, min_block_tokens=100) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="boundary scores"):
        segment([10, 10], [1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        segment([10, -1], [1.0])
    with pytest.raises(ValueError, match="finite"):
        segment([10, 10], [math.nan])
    with pytest.raises(ValueError, match="variance_penalty"):
        segment([10, 10], [1.0], variance_penalty=-0.5)
    with pytest.raises(ValueError, match="max_block_sentences"):
        segment([10, 10], [1.0], max_block_sentences=0)
    with pytest.raises(TypeError):
        segment([10.5, 10], [1.0])


def test_objective_by_hand() -> None:
    tokens, scores = [100, 100, 200], [3.0, 1.0]
    assert objective([(0, 2)], tokens, scores) == 0.0
    # sizes 200, 200 -> CV 0; one boundary entering block 2 (score 1) over 2 blocks
    assert objective([(0, 1), (2, 2)], tokens, scores) == pytest.approx(0.5)
    # sizes 100, 300: mean 200, std 100 -> CV 0.5
    assert objective([(0, 0), (1, 2)], tokens, scores, 0.5) == pytest.approx(3.0 / 2 - 0.25)
    with pytest.raises(ValueError, match="cover"):
        objective([(0, 0), (2, 2)], tokens, scores)
    with pytest.raises(ValueError, match="cover"):
        objective([(0, 1)], tokens, scores)


# -------------------------------------------------------------------------------- speed


def test_a_12k_token_trace_segments_fast() -> None:
    """The docstring's figure (about 0.3 s here); the bound leaves room for a loaded machine."""
    rng = random.Random(0)
    tokens = [rng.randint(20, 40) for _ in range(400)]
    scores = [float(rng.randint(0, 3)) for _ in range(399)]
    start = time.perf_counter()
    blocks = segment(tokens, scores, min_block_tokens=200)
    assert time.perf_counter() - start < 5.0
    assert_covers(blocks, 400)
    assert all(sum(tokens[a : b + 1]) >= 200 for a, b in blocks)
