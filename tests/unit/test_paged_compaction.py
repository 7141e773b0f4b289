"""Paged compaction applied to SGLang's real CPU pools: rows, KV and pages after one step.

`compact_paged_rows` plans every row (`memento_sglang.paging`) and applies the plans at
once: one `index_put_` into `req_to_token`, one KV move, one `free_page_ids`. Checked
here against what the step must leave behind, on SGLang's own `ReqToTokenPool`,
`MHATokenToKVPool` and `PagedTokenToKVPoolAllocator` (with its debug checks on):
every row page-consecutive and reading its survivors' K and V in every layer, the
freed pages back in the allocator exactly once, no page shared by two rows, the
tree-owned prefix untouched.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.sglang_plugin.paged_compaction import (
    PagedRow,
    compact_paged_rows,
    kv_buffers,
    pool_unsupported_reason,
)

LAYERS, HEADS, DIM = 2, 2, 4


def make_pools(page_size: int, pages: int, monkeypatch):
    monkeypatch.setenv("SGLANG_DEBUG_MEMORY_POOL", "1")
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool

    size = pages * page_size
    kv = MHATokenToKVPool(
        size=size, page_size=page_size, dtype=torch.float32, head_num=HEADS, head_dim=DIM,
        layer_num=LAYERS, device="cpu", enable_memory_saver=False, enable_alt_stream=False,
        enable_kv_cache_copy=False,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(pages)
    for b in kv_buffers(kv):
        b.copy_(torch.randn(b.shape, generator=gen))
    allocator = PagedTokenToKVPoolAllocator(size, page_size, torch.float32, "cpu", kv, need_sort=False)
    rows = ReqToTokenPool(size=8, max_context_len=max(size, 128), device="cpu", enable_memory_saver=False)
    return rows, kv, allocator


def random_spans(rng: random.Random, length: int, count: int) -> tuple[tuple[int, int], ...]:
    cuts = sorted(rng.sample(range(1, length), min(2 * count, length - 1)))
    return tuple((cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    page_size=st.sampled_from([2, 4, 16]),
    lengths=st.lists(st.integers(3, 90), min_size=1, max_size=4),
)
def test_one_step_over_several_rows(seed, page_size, lengths):
    with pytest.MonkeyPatch.context() as monkeypatch:
        pages = sum(-(-length // page_size) for length in lengths) + 4
        req_to_token_pool, kv, allocator = make_pools(page_size, pages, monkeypatch)
        rng = random.Random(seed)
        table = req_to_token_pool.req_to_token
        rows, survivors_kv, kept_prefix = [], [], []
        for index, length in enumerate(lengths):
            pages = -(-length // page_size)
            slots = allocator.alloc(pages * page_size)
            order = torch.randperm(pages, generator=torch.Generator().manual_seed(seed + index))
            slots = slots.view(pages, page_size)[order].reshape(-1)  # pages in any order
            table[index, :length] = slots[:length].to(table.dtype)
            spans = random_spans(rng, length, rng.randint(1, 3))
            # the tree may own whole pages before the first span's page
            protected = rng.randint(0, spans[0][0] // page_size) * page_size
            rows.append(PagedRow(index, length, protected, spans))
            live = [p for p in range(length) if not any(s <= p < e for s, e in spans)]
            survivors_kv.append([b[table[index, live].long()].clone() for b in kv_buffers(kv)])
            kept_prefix.append(table[index, :protected].clone())
        free_before = allocator.available_size()

        plans = compact_paged_rows(rows, table, allocator)

        used_pages: list[int] = []
        for row, plan, want, prefix in zip(rows, plans, survivors_kv, kept_prefix, strict=True):
            new_len = plan.new_row.numel()
            new_row = table[row.pool_index, :new_len].long()
            assert torch.equal(new_row, plan.new_row)
            assert torch.equal(new_row[: row.protected], prefix.long())
            starts = new_row[::page_size]
            assert bool((starts % page_size == 0).all())
            expect = starts.repeat_interleave(page_size)[:new_len] + torch.arange(new_len) % page_size
            assert torch.equal(new_row, expect), "row not page-consecutive"
            for buffer, survivors in zip(kv_buffers(kv), want, strict=True):
                assert torch.equal(buffer[new_row], survivors)
            used_pages += (starts // page_size).tolist()
        assert len(used_pages) == len(set(used_pages)), "two rows share a page"
        freed = sum(plan.freed_pages.numel() for plan in plans)
        assert allocator.available_size() == free_before + freed * page_size
        free_pages = set(allocator.get_all_free_pages().tolist())
        assert not free_pages & set(used_pages), "a page in use was freed"


def test_tree_owned_page_under_a_span_is_refused(monkeypatch):
    req_to_token_pool, _, allocator = make_pools(4, 16, monkeypatch)
    table = req_to_token_pool.req_to_token
    table[0, :12] = allocator.alloc(12).to(table.dtype)
    with pytest.raises(RuntimeError, match="prefix tree owns 8 slots"):
        compact_paged_rows([PagedRow(0, 12, 8, ((6, 9),))], table, allocator)


def test_only_plain_slot_major_pools_are_moved(monkeypatch):
    """An allow-list: SGLang's plain MHA pool passes; a subclass (more per-token state, as
    the DSA indexer keeps) and a buffer that is not one row per slot are refused by name."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    _, kv, allocator = make_pools(4, 16, monkeypatch)
    assert pool_unsupported_reason(allocator) is None

    class IndexerPool(MHATokenToKVPool):
        pass

    kv.__class__ = IndexerPool
    assert "IndexerPool KV pool" in pool_unsupported_reason(allocator)
    kv.__class__ = MHATokenToKVPool
    kv.k_buffer[0] = kv.k_buffer[0][::2]  # rows per page, say
    assert "not one contiguous row per slot" in pool_unsupported_reason(allocator)
    with pytest.raises(RuntimeError, match="paged compaction"):
        kv_buffers(kv)


def test_a_request_whose_block_page_the_tree_holds_is_aborted_not_compacted():
    """Reachable only by a request the Memento tree stopped keying: it ends with an error
    instead of decoding with its block visible, and its row is left alone."""
    from types import SimpleNamespace

    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    from memento_sglang.sequence import MementoSequence
    from memento_sglang.sglang_plugin import compaction
    from tests.support.synthetic import BS, spec, tokens

    seq = MementoSequence(spec(mask_delimiters=False), tokens("A w w"))
    seq.on_output_tokens([BS, *tokens("w w w ] ( s )")])
    due = seq.take_due(100)  # span [5, 8) in a row of 13
    req = SimpleNamespace(rid="r", to_finish=None, kv=SimpleNamespace(cache_protected_len=8))
    owners = compaction._Owners(None, SimpleNamespace(page_size=4), None)
    assert compaction._compact_paged(owners, [compaction._DueRow(req, seq, due)]) == [0]
    assert isinstance(req.to_finish, FINISH_ABORT) and "page" in req.to_finish.message


def test_a_request_outside_the_memento_tree_matches_no_page_a_block_starts_in(monkeypatch):
    """SGLang's own match for a request the Memento tree does not key: with pages it stops
    before the page of the first span that may leave (due, or an open block), not only
    before the first query that must not see a block."""
    from types import SimpleNamespace

    from memento_sglang.sequence import MementoSequence
    from memento_sglang.sglang_plugin import request_state, runtime
    from tests.support.synthetic import BS, spec, tokens

    closed = MementoSequence(
        spec(mask_delimiters=False), tokens("A w w [ w w w ] ( s ) w"), evict_prompt_blocks=True
    )
    opened = MementoSequence(spec(mask_delimiters=False), tokens("A w w w w w w") + [BS, *tokens("w w")])
    for seq in (closed, opened):
        seq.radix_keyed = False
    req_closed, req_open = SimpleNamespace(memento=closed), SimpleNamespace(memento=opened)
    span_start = closed.due_evictions()[0].start  # 5: the block's content
    assert request_state.cap_prefix_match(req_closed, 100) == closed.first_due_trigger + 1  # page size 1
    assert request_state.cap_prefix_match(req_open, 100) == 100
    monkeypatch.setattr(runtime, "_runtime", runtime.MementoRuntime(page_size=4))
    assert request_state.cap_prefix_match(req_closed, 100) == span_start // 4 * 4
    assert request_state.cap_prefix_match(req_open, 100) == 8  # the open block's span starts at 9
