"""Row compaction with paged KV (`--page-size P > 1`): which KV to move, which pages to free.

With page size 1 a closed block leaves a request's `req_to_token` row by shifting the
slot indices after it (`kernels.row_compaction`); no KV moves. With `P > 1` SGLang
needs every row to be page-consecutive: token `j` lives at slot
`page(j // P) * P + j % P` (the paged allocator continues a row at `last_loc + 1`, and
paged attention backends read one page id per `P` row entries). Removing `n` tokens
with `n % P != 0` shifts the in-page offset of every later token, so those tokens'
KV must move. This module plans that move for one row:

* tokens before the first span keep their slots (the row's prefix, which a prefix
  tree may share, is never written);
* a surviving token whose in-page offset does not change keeps its slot when its
  page can become the new row's page (whole pages after spans of `k * P` tokens);
* every other survivor is copied into a page the row already owns (the first span's
  partial page, then the pages the spans emptied), so no allocation is needed;
* pages the new row no longer uses are returned once each.

Pure Python + torch (no SGLang): the scheduler wiring applies the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Span = tuple[int, int]  # row positions [start, end), before the removal


@dataclass(frozen=True, slots=True, eq=False)
class PagedCompaction:
    """What one row's compaction does; all tensors are int64 on the CPU.

    The copies must be applied as one simultaneous move: read every `copy_src` slot,
    then write every `copy_dst` slot (a gather, then a scatter). Sources and
    destinations overlap in general (survivors slide inside the pages they already
    occupy), and no scratch page is taken. `copy_dst` has no repeats, so the scatter
    is well defined. The order is also safe one copy at a time when
    `sequential_safe` is set (a copy never reads a slot an earlier copy wrote),
    which is what a chunked copy needs.
    """

    #: slot of each surviving token, in order; page-consecutive
    new_row: torch.Tensor
    #: current slots of the surviving tokens whose KV moves
    copy_src: torch.Tensor
    #: their slots in the new row, inside pages the new row keeps
    copy_dst: torch.Tensor
    #: pages (slot // P) the new row no longer uses, each once
    freed_pages: torch.Tensor
    #: `new_row[:unchanged]` equals the old row's first entries (the caller rewrites
    #: the row from here on)
    unchanged: int
    #: applying the copies one at a time, in order, equals the simultaneous move
    sequential_safe: bool

    @property
    def copied(self) -> int:
        """Tokens whose KV moves (each costs one K and one V row in every layer)."""
        return int(self.copy_src.numel())


def plan_paged_compaction(
    row: Sequence[int] | torch.Tensor, length: int, spans: Sequence[Span], page_size: int
) -> PagedCompaction:
    """Plan removing `spans` from the first `length` entries of a page-consecutive row.

    `spans` are sorted, disjoint, non-empty `[start, end)` row positions of the row as
    it is now (all of them removed in one step). A tensor row may be a `req_to_token`
    row (longer than `length`); reading it from a GPU synchronizes. With `page_size`
    1 the plan is exactly the index shift: no copies, the spans' slots freed.
    """
    size = int(page_size)
    if size < 1:
        raise ValueError(f"page size {page_size} < 1")
    slots = _row_prefix(row, length)
    _check_page_consecutive(slots, size)
    cuts = _checked_spans(spans, length)
    empty = torch.empty(0, dtype=torch.int64)
    if not cuts:
        return PagedCompaction(slots.clone(), empty, empty, empty, length, True)

    first = cuts[0][0]
    head = first // size  # the first row page a span touches
    old_pages = slots[::size] // size  # page id of each page of the row
    survivors = _survivor_positions(cuts, head * size, length)  # old positions >= head * P
    removed = sum(end - start for start, end in cuts)
    new_len = length - removed
    new_positions = torch.arange(head * size, new_len, dtype=torch.int64)

    # new row page -> old row page index; the prefix keeps its pages
    choice: dict[int, int] = {n: n for n in range(head)}
    if first % size:
        choice[head] = head  # the partial page before the first span stays
    for n, k in _pages_kept_in_place(survivors, new_positions, size, first).items():
        choice.setdefault(n, k)
    taken = set(choice.values())
    spare = iter(k for k in range(len(old_pages)) if k not in taken)  # in row order
    new_page_count = -(-new_len // size)
    for n in range(new_page_count):
        if n not in choice:
            choice[n] = next(spare)  # never runs out: the row shrinks

    page_of_new = old_pages[torch.tensor([choice[n] for n in range(new_page_count)], dtype=torch.int64)]
    offsets = torch.arange(size, dtype=torch.int64)
    new_row = (page_of_new[:, None] * size + offsets).reshape(-1)[:new_len]
    src = slots[survivors]
    dst = new_row[new_positions]
    moves = src != dst
    copy_src, copy_dst = src[moves], dst[moves]
    copy_src, copy_dst, sequential = _sequential_order(copy_src, copy_dst)

    used = set(choice.values())
    freed = [k for k in range(len(old_pages)) if k not in used]  # in row order
    freed_pages = old_pages[torch.tensor(freed, dtype=torch.int64)] if freed else empty
    return PagedCompaction(new_row, copy_src, copy_dst, freed_pages, first, sequential)


def _row_prefix(row: Sequence[int] | torch.Tensor, length: int) -> torch.Tensor:
    if isinstance(row, torch.Tensor):
        if row.dim() != 1 or not 0 <= length <= row.numel():
            raise ValueError(f"row of shape {tuple(row.shape)} has no {length} entries")
        return row[:length].to("cpu", torch.int64)
    if not 0 <= length <= len(row):
        raise ValueError(f"row of {len(row)} entries has no {length} entries")
    return torch.tensor(list(row[:length]), dtype=torch.int64)


def _check_page_consecutive(slots: torch.Tensor, size: int) -> None:
    """SGLang's paged layout: entry `j` is `page * P + j % P`, one page per `P` entries,
    no page twice. Compaction of any other row would corrupt it further."""
    if slots.numel() == 0:
        return
    starts = slots[::size]
    expected = starts.repeat_interleave(size)[: slots.numel()] + torch.arange(slots.numel()) % size
    if bool((starts % size).any()) or not torch.equal(slots, expected):
        raise ValueError(f"row is not page-consecutive for page size {size}")
    if torch.unique(starts).numel() != starts.numel():
        raise ValueError("row uses a page twice")


def _checked_spans(spans: Sequence[Span], length: int) -> list[Span]:
    cuts = [(int(start), int(end)) for start, end in spans]
    previous_end = 0
    for start, end in cuts:
        if start < previous_end or end <= start or end > length:
            raise ValueError(f"span [{start}, {end}) is empty, unsorted, overlapping or past {length}")
        previous_end = end
    return cuts


def _survivor_positions(cuts: list[Span], begin: int, length: int) -> torch.Tensor:
    """Old row positions in `[begin, length)` outside every span, ascending."""
    pieces, cursor = [], begin
    for start, end in cuts:
        pieces.append(torch.arange(cursor, start, dtype=torch.int64))
        cursor = end
    pieces.append(torch.arange(cursor, length, dtype=torch.int64))
    return torch.cat(pieces)


def _pages_kept_in_place(old: torch.Tensor, new: torch.Tensor, size: int, first: int) -> dict[int, int]:
    """For each new row page, the old row page (index) that already holds the most of
    its tokens at the right offset, if any; such tokens need no copy.

    A token keeps its offset when the tokens removed before it are a multiple of `P`.
    Inside one old page those counts differ by less than `P`, so all its in-place
    tokens belong to one new page: an old page competes for one new page only, and
    taking the best per new page is the fewest copies over all such choices. Ties go
    to the earlier page. The prefix before `first` is handled by the caller.
    """
    keep = ((old - new) % size == 0) & (old >= first)
    if not bool(keep.any()):
        return {}
    old_page, new_page = old[keep] // size, new[keep] // size
    pages, counts = torch.unique(old_page, return_counts=True)
    target = torch.zeros(int(old_page.max()) + 1, dtype=torch.int64)
    target[old_page] = new_page
    best: dict[int, tuple[int, int]] = {}
    for k, count in zip(pages.tolist(), counts.tolist(), strict=True):
        n = int(target[k])
        if n not in best or count > best[n][0]:
            best[n] = (count, k)
    return {n: k for n, (_, k) in best.items()}


def _sequential_order(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Order the copies so that none reads a slot an earlier one wrote.

    Sources are distinct and destinations are distinct, so "copy `d` reads what copy
    `c` writes" links each copy to at most one other: the copies form chains, and a
    chain runs from its end back to its start. A cycle (never produced here, but not
    excluded by the types) leaves the order as is and reports it unsafe.
    """
    if src.numel() == 0:
        return src, dst, True
    reader = {s: i for i, s in enumerate(src.tolist())}  # slot -> the copy that reads it
    writes_read = [reader.get(d) for d in dst.tolist()]  # copy -> the copy that reads its dst
    read_by_other = {j for j in writes_read if j is not None}
    order: list[int] = []
    for start in range(len(writes_read)):
        if start in read_by_other:
            continue  # not the head of a chain
        chain: list[int] = []
        i: int | None = start
        while i is not None:
            chain.append(i)
            i = writes_read[i]
        order.extend(reversed(chain))  # the reader of a slot runs before its writer
    if len(order) != len(writes_read):
        return src, dst, False
    index = torch.tensor(order, dtype=torch.int64)
    return src[index], dst[index], True
