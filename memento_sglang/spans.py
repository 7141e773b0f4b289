"""Logical <-> physical arithmetic of a compacted KV row, in one immutable value.

A request's tokens have logical positions (what RoPE and the tracker see); its KV
row has physical slots, from which evicted spans were compacted out. `SpanMap` is
the set of those spans and every conversion between the two; nothing else does
this arithmetic. Blocks leave in order, so spans are sorted and disjoint, and a
map only grows at its end. Immutable so that a value handed out (a radix key's
spans, a mask plan's offset) never changes under its holder. Pure Python.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

Span = tuple[int, int]  # logical [start, end)


@dataclass(frozen=True, slots=True)
class SpanMap:
    """Sorted, disjoint, non-empty logical `[start, end)` spans out of a row."""

    spans: tuple[Span, ...] = ()
    #: total evicted tokens (cached: RoPE positions ask for it every forward)
    evicted_tokens: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spans = tuple((int(start), int(end)) for start, end in self.spans)
        previous_end = 0
        for start, end in spans:
            _check(start, end, previous_end)
            previous_end = end
        object.__setattr__(self, "spans", spans)
        object.__setattr__(self, "evicted_tokens", sum(end - start for start, end in spans))

    def __iter__(self) -> Iterator[Span]:
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)

    # ----------------------------------------------------------------- growing

    def with_span(self, start: int, end: int) -> SpanMap:
        """This map plus `[start, end)`, which must lie after every span (blocks leave
        in order; an earlier span would move slots that later spans already count)."""
        _check(start, end, self.spans[-1][1] if self.spans else 0)
        return SpanMap((*self.spans, (start, end)))

    def plus(self, spans: Iterable[Span]) -> SpanMap:
        """This map plus `spans` (in order, each after the last), e.g. the due ones."""
        return SpanMap((*self.spans, *spans))  # validated as a whole

    # -------------------------------------------------------------- converting

    def evicted_before(self, logical: int) -> int:
        """Evicted tokens at logical positions below `logical`."""
        total = 0
        for start, end in self.spans:
            if start >= logical:
                break
            total += min(end, logical) - start
        return total

    def to_physical(self, logical: int) -> int:
        """Row slot of a logical position that is not inside a span (a span's end
        maps to the slot the span left to the token after it)."""
        return logical - self.evicted_before(logical)

    def to_logical(self, physical: int) -> int:
        """Logical position of the live token at row slot `physical`; a row's length
        maps to the logical position of the next token appended."""
        logical = physical
        for start, end in self.spans:
            if start > logical:
                break
            logical += end - start
        return logical

    def physical_limit(self, logical_limit: int) -> int:
        """The longest physical prefix covering at most `logical_limit` logical tokens:
        the live tokens below the limit.

        Covering a span takes the slot after it (its radix fingerprint), so a limit
        inside a span, or at its end, stops right before the span.
        """
        return logical_limit - self.evicted_before(logical_limit)

    def strip(self, ids: Sequence[int]) -> array:
        """The physical token ids: logical `ids` without the spans."""
        out = array("q")
        cursor = 0
        for start, end in self.spans:
            out.extend(ids[cursor:start])
            cursor = end
        out.extend(ids[cursor:])
        return out


def _check(start: int, end: int, previous_end: int) -> None:
    if start < previous_end or end <= start:
        raise ValueError(f"span [{start}, {end}) is empty, overlaps or precedes one ending at {previous_end}")


#: nothing evicted (a fresh or released row)
EMPTY: Final = SpanMap()
