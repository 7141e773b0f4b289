"""Paged row compaction plan: a simulated paged KV pool shows every plan keeps exactly
the surviving tokens, page-consecutive, with every page accounted for once.

The pool's "KV" at a slot is the row position of the token stored there. A plan's
copies are applied the only way the plan promises to be right: simultaneously (gather
every source, then scatter), since sources and destinations overlap.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.kernels.row_compaction import shift_row_left
from memento_sglang.paging import PagedCompaction, plan_paged_compaction

PAGE_SIZES = [1, 2, 3, 4, 8, 16]


def paged_row(pages: list[int], page_size: int, length: int) -> list[int]:
    """SGLang's paged layout: entry `j` is `pages[j // P] * P + j % P`."""
    return [pages[j // page_size] * page_size + j % page_size for j in range(length)]


def pool_with(row: list[int], page_count: int, page_size: int) -> torch.Tensor:
    """Slot -> row position of its token; -1 for slots no token uses."""
    kv = torch.full(((page_count + 1) * page_size,), -1, dtype=torch.int64)
    kv[torch.tensor(row, dtype=torch.int64)] = torch.arange(len(row))
    return kv


def move_simultaneously(kv: torch.Tensor, plan: PagedCompaction) -> torch.Tensor:
    out = kv.clone()
    out[plan.copy_dst] = kv[plan.copy_src]  # gather all, then scatter
    return out


def move_one_by_one(kv: torch.Tensor, plan: PagedCompaction) -> torch.Tensor:
    out = kv.clone()
    for s, d in zip(plan.copy_src.tolist(), plan.copy_dst.tolist(), strict=True):
        out[d] = out[s]
    return out


def dense_compaction(row: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """The page-size-1 compaction (`shift_row_left`, last span first)."""
    table = torch.tensor([row + [0]], dtype=torch.int64)
    length = len(row)
    for start, end in reversed(spans):
        shift_row_left(table, 0, start, end, length)
        length -= end - start
    return table[0, :length].tolist()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pages_of(slots: list[int], page_size: int) -> list[int]:
    return [slots[j] // page_size for j in range(0, len(slots), page_size)]


def check_plan(row: list[int], spans: list[tuple[int, int]], page_size: int, page_count: int):
    """Plan, apply, and check the properties every plan has; return the plan."""
    plan = plan_paged_compaction(row, len(row), spans, page_size)
    kv = pool_with(row, page_count, page_size)
    after = move_simultaneously(kv, plan)
    new_row = plan.new_row.tolist()
    survivors = [p for p in range(len(row)) if not any(s <= p < e for s, e in spans)]
    # (a) the new row reads exactly the surviving tokens, in order: the dense compaction's
    assert after[plan.new_row].tolist() == survivors
    assert kv[torch.tensor(dense_compaction(row, spans), dtype=torch.int64)].tolist() == survivors
    # (b) page-consecutive, pages aligned
    for j, slot in enumerate(new_row):
        assert slot == new_row[j - j % page_size] + j % page_size
        assert new_row[j - j % page_size] % page_size == 0
    # (c) kept pages and freed pages split the row's pages; each freed once
    kept, freed, old = pages_of(new_row, page_size), plan.freed_pages.tolist(), pages_of(row, page_size)
    assert len(set(freed)) == len(freed) and not set(freed) & set(kept)
    assert sorted(kept + freed) == sorted(old) and len(set(kept)) == len(kept)
    # copies: from survivors' slots, into kept pages, no slot written twice
    src, dst = plan.copy_src.tolist(), plan.copy_dst.tolist()
    assert plan.copied == len(src) == len(dst) == len(set(dst)) == len(set(src))
    assert set(src) <= {row[p] for p in survivors}
    assert {d // page_size for d in dst} <= set(kept)
    # the prefix before the first span never moves, and the caller may skip it
    first = spans[0][0] if spans else len(row)
    assert plan.unchanged == first and new_row[:first] == row[:first]
    assert not {row[p] for p in range(first)} & (set(src) | set(dst))
    # the emitted order is also right one copy at a time (a chunked move)
    assert plan.sequential_safe
    assert torch.equal(move_one_by_one(kv, plan)[plan.new_row], after[plan.new_row])
    return plan


@st.composite
def paged_cases(draw, *, aligned: bool = False):
    """A page-consecutive row over shuffled pages of a small pool, and spans to remove.
    `aligned`: every span starts on a page and ends on one (or at the row's end)."""
    page_size = draw(st.sampled_from(PAGE_SIZES))
    length = draw(st.integers(0, 70))
    need = -(-length // page_size)
    page_count = need + draw(st.integers(0, 3))
    order = draw(st.permutations(range(1, page_count + 1)))  # page 0 is SGLang's padding page
    row = paged_row(list(order[:need]), page_size, length)
    if aligned:
        bounds = sorted(draw(st.sets(st.integers(0, need), max_size=6)))
        bounds = [min(b * page_size, length) for b in bounds]
    else:
        bounds = sorted(draw(st.sets(st.integers(0, length), max_size=8)))
    pairs = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds) - 1, 2)]
    spans = [(s, e) for s, e in pairs if s < e and draw(st.booleans())]
    return row, spans, page_size, page_count


@settings(max_examples=300, deadline=None)
@given(case=paged_cases())
def test_plan_keeps_survivors_page_consecutive(case):
    row, spans, page_size, page_count = case
    plan = check_plan(row, spans, page_size, page_count)
    first = spans[0][0] if spans else len(row)
    # (e) only tokens at or after the first span can move
    assert plan.copied <= len(row) - sum(e - s for s, e in spans) - first


@settings(max_examples=100, deadline=None)
@given(case=paged_cases(aligned=True))
def test_page_aligned_spans_copy_nothing(case):
    """(d) removed count before every surviving page is a multiple of P: no copy."""
    row, spans, page_size, page_count = case
    assert check_plan(row, spans, page_size, page_count).copied == 0


def test_offsets_kept_are_not_enough_when_a_new_page_joins_two_old_ones():
    """Every survivor keeps its in-page offset (4 and 8 tokens removed before them), yet
    new page 0 gathers offsets 0-1 of old page 1 and offsets 2-3 of old page 2: one half
    moves (the fewest copies possible without new pages)."""
    row = paged_row([1, 2, 3], 4, 12)
    plan = check_plan(row, [(0, 4), (6, 10)], 4, 3)
    assert plan.copied == 2 and plan.new_row.tolist() == [8, 9, 10, 11]


@settings(max_examples=100, deadline=None)
@given(case=paged_cases())
def test_page_size_one_is_the_index_shift(case):
    row, spans, _, page_count = case
    row = list(range(1, len(row) + 1))  # one-slot pages, page 0 unused
    plan = check_plan(row, spans, 1, len(row) + 1)
    assert plan.copied == 0
    assert plan.new_row.tolist() == dense_compaction(row, spans)
    assert plan.freed_pages.tolist() == [row[p] for s, e in spans for p in range(s, e)]


@settings(max_examples=200, deadline=None)
@given(
    page_size=st.sampled_from(PAGE_SIZES),
    start=st.integers(0, 40),
    block=st.integers(1, 40),
    tail=st.integers(0, 40),
)
def test_one_span_then_a_tail_copies_at_most_the_tail(page_size, start, block, tail):
    """(e) a span followed by `t` tokens: exactly the tail when the span is not a whole
    number of pages; else only the tail part that refills the span's first page."""
    length = start + block + tail
    pages = list(range(1, -(-length // page_size) + 1))[::-1]
    plan = check_plan(paged_row(pages, page_size, length), [(start, start + block)], page_size, len(pages))
    refill = (page_size - start % page_size) % page_size  # the rest of the span's first page
    expected = tail if block % page_size else min(tail, refill)
    assert plan.copied == expected <= tail + page_size


class PagedPool:
    """A paged allocator as SGLang's: a row grows at `last_loc + 1` inside its last
    page and takes a free page at each page boundary."""

    def __init__(self, page_count: int, page_size: int) -> None:
        self.size = page_size
        self.free = list(range(1, page_count + 1))
        self.kv = torch.full(((page_count + 1) * page_size,), -1, dtype=torch.int64)

    def append(self, row: list[int], tokens: list[int]) -> list[int]:
        for token in tokens:
            slot = row[-1] + 1 if len(row) % self.size else self.free.pop(0) * self.size
            self.kv[slot] = token
            row = [*row, slot]
        return row

    def compact(self, row: list[int], spans: list[tuple[int, int]]) -> list[int]:
        plan = plan_paged_compaction(row, len(row), spans, self.size)
        self.kv = move_simultaneously(self.kv, plan)
        self.free.extend(plan.freed_pages.tolist())
        assert not set(self.free) & set(pages_of(plan.new_row.tolist(), self.size))
        return plan.new_row.tolist()


@pytest.mark.parametrize("page_size", [1, 4, 16, 64])
def test_memento_steps_block_then_memento_then_more_decode(page_size):
    """The common case: a prompt, then per step a block and its memento; the block
    leaves once its memento closed (the memento and the trigger are the tail), and
    decoding continues in the compacted row. Token ids are logical positions."""
    page_count = ceil_div(600, page_size) + 8
    pool = PagedPool(page_count, page_size)
    logical, row, visible = 0, list[int](), list[int]()

    def emit(n: int) -> list[int]:
        nonlocal logical
        tokens = list(range(logical, logical + n))
        logical += n
        return tokens

    prompt = emit(37)
    row = pool.append(row, prompt)
    visible += prompt
    for block_len, memento_len in [(50, 9), (23, 5), (64 * 3, 1), (7, 30)]:
        block, memento = emit(block_len), emit(memento_len + 1)  # + the trigger token
        row = pool.append(row, block + memento)
        start = len(visible)
        before = len(pool.free)
        row = pool.compact(row, [(start, start + block_len)])
        visible += memento
        assert pool.kv[torch.tensor(row)].tolist() == visible
        pages_now = ceil_div(len(row), page_size)
        assert len(pool.free) - before == ceil_div(len(row) + block_len, page_size) - pages_now
        answer = emit(11)
        row = pool.append(row, answer)  # the paged allocator continues the row
        visible += answer
        assert pool.kv[torch.tensor(row)].tolist() == visible
    assert len(pool.free) + ceil_div(len(row), page_size) == page_count  # no page lost, none twice


def test_copy_count_of_a_memento_tail():
    """P = 16, a block of 50 tokens after 37: the memento (10 tokens) moves into the
    block's first page; the 4 pages after it go back."""
    row = paged_row(list(range(1, 8)), 16, 97)
    plan = check_plan(row, [(37, 87)], 16, 7)
    assert plan.copied == 10 and plan.freed_pages.tolist() == [4, 5, 6, 7]
    assert plan.copy_dst.tolist() == list(range(3 * 16 + 5, 3 * 16 + 15))


def test_rejects_rows_that_are_not_paged_and_bad_spans():
    with pytest.raises(ValueError, match="page-consecutive"):
        plan_paged_compaction([4, 5, 6, 8], 4, [(0, 1)], 2)
    with pytest.raises(ValueError, match="page-consecutive"):
        plan_paged_compaction([5, 6], 2, [(0, 1)], 2)  # not starting a page
    with pytest.raises(ValueError, match="twice"):
        plan_paged_compaction([4, 5, 4, 5], 4, [(0, 1)], 2)
    for spans in ([(2, 2)], [(3, 9)], [(2, 4), (3, 5)]):
        with pytest.raises(ValueError, match="span"):
            plan_paged_compaction(list(range(8)), 8, spans, 4)


def test_reads_a_req_to_token_row():
    table = torch.zeros(2, 32, dtype=torch.int32)
    table[1, :10] = torch.tensor(paged_row([3, 1, 7], 4, 10), dtype=torch.int32)
    plan = plan_paged_compaction(table[1], 10, [(5, 9)], 4)
    assert plan.new_row.tolist() == [12, 13, 14, 15, 4, 5] and plan.freed_pages.tolist() == [7]
    assert plan.copy_src.tolist() == [29] and plan.copy_dst.tolist() == [5]
