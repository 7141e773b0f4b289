"""Masked prefill batches bounded by the size of their mask.

A masked prefill builds one boolean entry per (query, key) pair of the batch:
`extend * (prefix + extend)` per request (`kernels.extend_masks`). FlashInfer's mask
indptr and Triton's mask offsets are int32, and the mask lives outside SGLang's memory
planning, so a long prompt's late chunk (a few thousand queries against 100k+ keys)
could overflow or take gigabytes. `prefill_mask_budget` bounds the entries of one
batch: once a batch holds a masked request, every request admitted into it is chunked
so that its rows fit what is left of the budget (SGLang's `rem_chunk_tokens`, lowered
for the call to `PrefillAdder.add_one_req` / `add_chunked_req`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from memento_sglang.kernels.extend_masks import largest_chunk, mask_entries
from memento_sglang.sglang_plugin import runtime

if TYPE_CHECKING:
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.managers.schedule_policy import PrefillAdder

_ENTRIES = "_memento_mask_entries"  # mask entries of the requests admitted into the batch
_MASKED = "_memento_batch_masked"  # whether one of them needs a Memento mask


def chunk_limit(adder: PrefillAdder, req: Req, needs_mask: bool, *, continuing: bool = False) -> int | None:
    """How many new tokens `req` may prefill in `adder`'s batch; None: no Memento limit.

    The limit applies once the batch holds a masked request (or `req` is one): requests
    admitted before it count too, since a custom mask covers the whole batch. A prompt
    this budget cut before keeps a limit for its next chunks when SGLang's own chunking
    is off (`rem_chunk_tokens` None, which SGLang's chunk path cannot take). The batch's
    first request always gets at least one page (SGLang rounds a new request's chunk
    down to whole pages), so a prompt makes progress.
    """
    unchunked_continuation = continuing and adder.rem_chunk_tokens is None
    rt = runtime.current()
    budget = rt.mask_budget
    if budget is None or not (needs_mask or unchunked_continuation or getattr(adder, _MASKED, False)):
        return None
    limit = largest_chunk(req.prefix_len, budget - getattr(adder, _ENTRIES, 0))
    return max(limit, rt.page_size) if not adder.can_run_list else limit


@contextmanager
def chunk_scope(adder: PrefillAdder, req: Req, limit: int | None, needs_mask: bool) -> Iterator[None]:
    """Within the block, SGLang's chunk budget is at most `limit`; afterwards it is what it
    was less what the admitted chunk used, and the batch's mask entries are counted.

    A request the limit cut short (it is the batch's chunked request, or used the whole
    limit) closes the batch to more prefill: SGLang carries one chunked request at a
    time, and a chunk that filled SGLang's own budget closes the batch the same way.
    """
    stock = adder.rem_chunk_tokens
    lowered = stock if limit is None else (limit if stock is None else min(stock, limit))
    adder.rem_chunk_tokens = lowered
    try:
        yield
    finally:
        if lowered is not None and lowered != stock:
            left = adder.rem_chunk_tokens
            cut = left <= 0 or adder.new_chunked_req is req or _still_chunked(adder, req)
            adder.rem_chunk_tokens = 0 if cut else (None if stock is None else stock - (lowered - left))
    if req in adder.can_run_list:
        entries = getattr(adder, _ENTRIES, 0) + mask_entries(req.prefix_len, req.extend_len)
        setattr(adder, _ENTRIES, entries)
        if needs_mask:
            setattr(adder, _MASKED, True)


def _still_chunked(adder: PrefillAdder, req: Req) -> bool:
    """A chunk admitted into the batch short of the prompt's end."""
    end = req.extend_end
    return req in adder.can_run_list and end is not None and end < len(req.full_untruncated_fill_ids)
