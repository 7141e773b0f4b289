"""Paged KV (`--page-size` 16 and 64): compaction moves the survivors of partial pages.

The shared oracle cases (decode eviction, policies, masked prefill, radix reuse, forks,
concurrency) also run on the paged servers through the `any_server`, `masked_server`
and `radix_server` fixtures. Here: what only pages have. KV really moves (an eviction
whose span is not a whole number of pages), the tree shares only whole pages, and the
server's own layout checks (`SGLANG_DEBUG_MEMORY_POOL=1`, invariants, leak checks at
idle) stay quiet through it all.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.client import (
    SERVER_DEFAULT,
    assert_matches_reference,
    chat_prompt,
    memento_body,
    opt_in,
    prompt_with_closed_blocks,
    run_and_check,
)

pytestmark = pytest.mark.server


def counter(server, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=30).text
    found = re.findall(rf"^sglang:memento_{name}\{{[^}}]*\}} (\S+)$", text, flags=re.M)
    assert found, f"sglang:memento_{name} missing from /metrics"
    return sum(map(float, found))


def test_partial_pages_move_their_survivors(paged16_server, reference, tokenizer, token_ids):
    """Blocks of 5-11 tokens: every eviction leaves a partial page whose survivors move,
    and the tokens stay exact."""
    moved = counter(paged16_server, "kv_tokens_moved_total")
    evicted = counter(paged16_server, "tokens_evicted_total")
    prompt = chat_prompt(tokenizer, "Move my pages")
    _, stats = run_and_check(paged16_server, reference, token_ids, prompt, [(9, 3), (11, 2), (5, 4)])
    assert stats["blocks_evicted"] == 3
    assert counter(paged16_server, "tokens_evicted_total") - evicted == stats["tokens_evicted"]
    assert counter(paged16_server, "kv_tokens_moved_total") > moved


def test_a_long_trace_with_many_blocks(paged_server, reference, tokenizer, token_ids):
    """Twelve cycles: rows shrink and grow across many pages, pages are reused in between."""
    prompt = chat_prompt(tokenizer, "Think for a long time")
    blocks = [(7 + 3 * (i % 5), 2 + i % 3) for i in range(12)]
    _, stats = run_and_check(paged_server, reference, token_ids, prompt, blocks, max_new_tokens=600)
    assert stats["blocks_evicted"] == 12


def test_the_tree_shares_whole_pages_only(paged_server, reference, tokenizer, token_ids):
    """A trace with closed blocks, sent twice: the second matches through its mementos, and
    the cached part is a whole number of pages."""
    page = paged_server.page_size
    question = " ".join(["Continue the reasoning about the numbers we saw."] * 8)  # > 64 slots kept
    prompt = prompt_with_closed_blocks(tokenizer, token_ids, 6, question) + [token_ids.block_start]
    body = memento_body(prompt, [], resume_open_block=(5, 2), in_think=True, memento=opt_in({}))
    first = paged_server.generate(body)
    second = paged_server.generate(body)
    assert second["output_ids"] == first["output_ids"]
    cached = second["meta_info"]["cached_tokens"]
    assert cached > 0 and cached % page == 0
    assert_matches_reference(reference, token_ids, prompt, second["output_ids"], SERVER_DEFAULT)


def test_forks_share_whole_pages_and_stay_exact(paged_server, reference, tokenizer, token_ids):
    """What `s.fork(8)` sends: the state once, then eight continuations at the same time."""
    question = " ".join(["Fork the reasoning about the numbers we saw."] * 8)
    prompt = prompt_with_closed_blocks(tokenizer, token_ids, 5, question) + [token_ids.block_start]
    body = memento_body(prompt, [(6, 2)], resume_open_block=(5, 2), in_think=True, memento=opt_in({}))
    paged_server.generate({**body, "sampling_params": {**body["sampling_params"], "max_new_tokens": 0}})
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(paged_server.generate, [body] * 8))
    page = paged_server.page_size
    for out in outs:
        cached = out["meta_info"]["cached_tokens"]
        assert cached > 0 and cached % page == 0
        assert out["meta_info"]["memento"]["tree_kv_slots"] >= cached
        assert out["output_ids"] == outs[0]["output_ids"]
    assert_matches_reference(reference, token_ids, prompt, outs[0]["output_ids"], SERVER_DEFAULT)
    paged_server.assert_healthy()
