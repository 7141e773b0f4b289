"""SpanMap: every logical <-> physical conversion against a brute-force row."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.spans import EMPTY, SpanMap


@st.composite
def span_maps(draw) -> SpanMap:
    """Sorted, disjoint, non-empty spans; adjacent ones included (gap 0)."""
    spans, at = [], 0
    for gap, size in draw(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5)), max_size=6)):
        spans.append((at + gap, at + gap + size))
        at += gap + size
    return SpanMap(spans)


def evicted(m: SpanMap, logical: int) -> bool:
    return any(start <= logical < end for start, end in m)


def live(m: SpanMap, n: int) -> list[int]:
    """Logical positions of the live tokens of a row of `n` logical tokens."""
    return [p for p in range(n) if not evicted(m, p)]


def row_len(m: SpanMap, tail: int) -> int:
    return (m.spans[-1][1] if m else 0) + tail


MAPS = span_maps()
TAIL = st.integers(0, 6)


@settings(max_examples=300, deadline=None)
@given(MAPS, TAIL)
def test_to_physical_and_to_logical_round_trip_on_live_tokens(m, tail):
    n = row_len(m, tail)
    positions = live(m, n)
    assert [m.to_physical(p) for p in positions] == list(range(len(positions)))
    assert [m.to_logical(i) for i in range(len(positions))] == positions
    assert m.to_logical(len(positions)) == n  # the row's length: the next token's position
    assert len(positions) == n - m.evicted_tokens


@settings(max_examples=300, deadline=None)
@given(MAPS, TAIL)
def test_evicted_before_counts_evicted_positions(m, tail):
    n = row_len(m, tail)
    for logical in range(n + 2):
        assert m.evicted_before(logical) == sum(evicted(m, p) for p in range(logical))
    assert m.evicted_before(n) == m.evicted_tokens == sum(end - start for start, end in m)


@settings(max_examples=300, deadline=None)
@given(MAPS, TAIL, st.integers(0, 6))
def test_strip_drops_exactly_the_spans(m, tail, cut):
    n = row_len(m, tail)
    ids = [1000 + p for p in range(n)]
    stripped = list(m.strip(ids))
    assert stripped == [x for p, x in enumerate(ids) if not evicted(m, p)]
    assert len(stripped) == len(ids) - m.evicted_tokens
    short = ids[: max(n - cut, 0)]  # a span past the ids removes only what is there
    assert list(m.strip(short)) == [x for p, x in enumerate(short) if not evicted(m, p)]


@settings(max_examples=300, deadline=None)
@given(MAPS, TAIL)
def test_physical_limit_is_the_longest_prefix_within_the_logical_limit(m, tail):
    """A prefix of `k` slots covers logical tokens up to its last slot's, plus one; a
    span's tokens are covered only by the slot after it (the fingerprint's)."""
    n = row_len(m, tail)
    positions = live(m, n + 1) + [n + 1]  # one live token past every limit below
    for limit in range(n + 2):
        longest = max(k for k in range(len(positions) + 1) if k == 0 or positions[k - 1] + 1 <= limit)
        assert m.physical_limit(limit) == longest


@settings(max_examples=300, deadline=None)
@given(MAPS, st.integers(-2, 40), st.integers(-2, 12))
def test_with_span_appends_or_refuses(m, start, size):
    end = start + size
    last_end = m.spans[-1][1] if m else 0
    if start < last_end or size <= 0:
        with pytest.raises(ValueError):
            m.with_span(start, end)
        return
    grown = m.with_span(start, end)
    assert grown.spans == (*m.spans, (start, end)) and len(grown) == len(m) + 1
    assert grown.evicted_tokens == m.evicted_tokens + size
    assert m.plus([(start, end)]) == grown and m.spans == tuple(m)  # `m` itself is unchanged


@settings(max_examples=200, deadline=None)
@given(MAPS)
def test_plus_is_with_span_in_order(m):
    assert EMPTY.plus(m) == m
    assert SpanMap(list(m)) == m
    if len(m) >= 2:
        with pytest.raises(ValueError):
            SpanMap(reversed(m.spans))


def test_examples():
    m = SpanMap(((5, 10), (20, 23)))
    assert [m.to_physical(i) for i in (0, 4, 10, 19, 23, 30)] == [0, 4, 5, 14, 15, 22]
    assert [m.to_logical(i) for i in (0, 4, 5, 14, 15, 22)] == [0, 4, 10, 19, 23, 30]
    assert [m.physical_limit(i) for i in (5, 7, 10, 11, 20, 22, 23, 24)] == [5, 5, 5, 6, 15, 15, 15, 16]
    with pytest.raises(ValueError):
        m.with_span(21, 22)  # overlaps
    with pytest.raises(ValueError):
        m.with_span(1, 2)  # precedes
    with pytest.raises(ValueError):
        SpanMap(((5, 10), (8, 12)))
    assert not EMPTY and EMPTY.evicted_tokens == 0 and EMPTY.to_logical(3) == 3
