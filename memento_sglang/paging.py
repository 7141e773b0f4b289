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

    Plain Python over the row from the first span's page on (a few pages and a tail in
    decode): a compaction step plans many rows, and small tensor ops would cost more
    than the work. The prefix before that page is neither read nor checked.
    """
    size = int(page_size)
    if size < 1:
        raise ValueError(f"page size {page_size} < 1")
    slots = _row_prefix(row, length)
    cuts = _checked_spans(spans, length)
    empty = torch.empty(0, dtype=torch.int64)
    if not cuts:
        _check_page_consecutive(slots, size)
        return PagedCompaction(torch.tensor(slots, dtype=torch.int64), empty, empty, empty, length, True)

    first = cuts[0][0]
    head = first // size  # the first row page a span touches
    base = head * size
    _check_page_consecutive(slots[base:], size)
    old_pages = [slots[j] // size for j in range(0, length, size)]  # page id of each row page
    survivors = _survivor_positions(cuts, base, length)  # old positions >= base
    new_len = length - sum(end - start for start, end in cuts)

    # new row page -> old row page index; the prefix keeps its pages
    choice: dict[int, int] = {n: n for n in range(head)}
    if first % size:
        choice[head] = head  # the partial page before the first span stays
    for n, k in _pages_kept_in_place(survivors, base, size, first).items():
        choice.setdefault(n, k)
    taken = set(choice.values())
    spare = iter(k for k in range(len(old_pages)) if k not in taken)  # in row order
    for n in range(-(-new_len // size)):
        if n not in choice:
            choice[n] = next(spare)  # never runs out: the row shrinks

    new_row = slots[:base] + [old_pages[choice[j // size]] * size + j % size for j in range(base, new_len)]
    moved = (new for new, old in enumerate(survivors, start=base) if slots[old] != new_row[new])
    copies = [(slots[survivors[new - base]], new_row[new]) for new in moved]
    ordered, sequential = _sequential_order(copies)
    used = set(choice.values())
    freed = [old_pages[k] for k in range(len(old_pages)) if k not in used]  # in row order

    def tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64) if values else empty

    return PagedCompaction(
        new_row=tensor(new_row),
        copy_src=tensor([src for src, _ in ordered]),
        copy_dst=tensor([dst for _, dst in ordered]),
        freed_pages=tensor(freed),
        unchanged=first,
        sequential_safe=sequential,
    )


def _row_prefix(row: Sequence[int] | torch.Tensor, length: int) -> list[int]:
    if isinstance(row, torch.Tensor):
        if row.dim() != 1 or not 0 <= length <= row.numel():
            raise ValueError(f"row of shape {tuple(row.shape)} has no {length} entries")
        return row[:length].tolist()
    if not 0 <= length <= len(row):
        raise ValueError(f"row of {len(row)} entries has no {length} entries")
    return [int(slot) for slot in row[:length]]


def _check_page_consecutive(slots: list[int], size: int) -> None:
    """SGLang's paged layout: entry `j` is `page * P + j % P`, one page per `P` entries,
    no page twice. Compaction of any other row would corrupt it further. `slots` starts
    at a page boundary of the row."""
    starts = slots[::size]
    for j, slot in enumerate(slots):
        start = starts[j // size]
        if start % size or slot != start + j % size:
            raise ValueError(f"row is not page-consecutive for page size {size}")
    if len(set(starts)) != len(starts):
        raise ValueError("row uses a page twice")


def _checked_spans(spans: Sequence[Span], length: int) -> list[Span]:
    cuts = [(int(start), int(end)) for start, end in spans]
    previous_end = 0
    for start, end in cuts:
        if start < previous_end or end <= start or end > length:
            raise ValueError(f"span [{start}, {end}) is empty, unsorted, overlapping or past {length}")
        previous_end = end
    return cuts


def _survivor_positions(cuts: list[Span], begin: int, length: int) -> list[int]:
    """Old row positions in `[begin, length)` outside every span, ascending."""
    out: list[int] = []
    cursor = begin
    for start, end in cuts:
        out.extend(range(cursor, start))
        cursor = end
    out.extend(range(cursor, length))
    return out


def _pages_kept_in_place(survivors: list[int], base: int, size: int, first: int) -> dict[int, int]:
    """For each new row page, the old row page (index) that already holds the most of
    its tokens at the right offset, if any; such tokens need no copy.

    `survivors[i]` moves to new position `base + i`. A token keeps its offset when the
    tokens removed before it are a multiple of `P`. Inside one old page those counts
    differ by less than `P`, so all its in-place tokens belong to one new page: an old
    page competes for one new page only, and taking the best per new page is the fewest
    copies over all such choices. Ties go to the earlier page. The prefix before
    `first` is handled by the caller.
    """
    counts: dict[int, int] = {}
    target: dict[int, int] = {}
    for new, old in enumerate(survivors, start=base):
        if old >= first and (old - new) % size == 0:
            page = old // size
            counts[page] = counts.get(page, 0) + 1
            target[page] = new // size
    best: dict[int, tuple[int, int]] = {}
    for page in sorted(counts):
        n, count = target[page], counts[page]
        if n not in best or count > best[n][0]:
            best[n] = (count, page)
    return {n: page for n, (_, page) in best.items()}


def _sequential_order(copies: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], bool]:
    """Order the (src, dst) copies so that none reads a slot an earlier one wrote.

    Sources are distinct and destinations are distinct, so "copy `d` reads what copy
    `c` writes" links each copy to at most one other: the copies form chains, and a
    chain runs from its end back to its start. A cycle (never produced here, but not
    excluded by the types) leaves the order as is and reports it unsafe.
    """
    if not copies:
        return copies, True
    reader = {src: i for i, (src, _) in enumerate(copies)}  # slot -> the copy that reads it
    writes_read = [reader.get(dst) for _, dst in copies]  # copy -> the copy that reads its dst
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
        return copies, False
    return [copies[i] for i in order], True
