"""The Memento radix cache: mementos shared through the tree, exactly, without poisoning.

Every hit is checked three ways: the cached token count SGLang reports, the
Memento stats (blocks and logical tokens reused), and the output, which must equal
the same request on a server without a radix cache and the HF oracle.
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
)
from tests.support.mask_rule import hidden_spans

pytestmark = pytest.mark.server

BLOCKS = [(6, 2), (5, 2), (7, 2)]


def evicted_before(ids, token_ids, end: int) -> int:
    """Tokens of `ids[:end]` that a compacted row no longer holds."""
    spans = hidden_spans(ids, token_ids, **SERVER_DEFAULT)
    return sum(min(e, end) - s for s, e, trig in spans if trig < end - 1 and s < end)


def resumable_prompt(tokenizer, token_ids, n_closed: int) -> list[int]:
    """A trace with closed blocks and a freshly opened one: every memento is reusable."""
    return prompt_with_closed_blocks(tokenizer, token_ids, n_closed) + [token_ids.block_start]


def resume_body(prompt, **kw):
    return memento_body(prompt, [], resume_open_block=(5, 2), in_think=True, memento=opt_in({}), **kw)


def assert_full_hit(out, prompt, token_ids, n_closed: int, page_size: int = 1) -> None:
    """All but the last prompt token came from the tree, the closed blocks skipped. With
    pages the tree holds whole pages only: the hit is the row's whole pages."""
    meta = out["meta_info"]
    row = len(prompt) - 1 - evicted_before(prompt, token_ids, len(prompt))
    if page_size > 1:
        assert meta["cached_tokens"] == row // page_size * page_size
        return
    assert meta["cached_tokens"] == row
    assert meta["memento"]["reused_blocks"] == n_closed
    assert meta["memento"]["reused_prompt_tokens"] == len(prompt) - 1


def test_resubmitted_trace_matches_through_its_mementos(
    radix_server, plain_server, reference, tokenizer, token_ids
):
    prompt = chat_prompt(tokenizer, "Resubmit me")
    first = radix_server.generate(memento_body(prompt, BLOCKS, memento=opt_in({})))["output_ids"]
    closes = [i for i, t in enumerate(first) if t == token_ids.summary_end]
    resumed = prompt + first[: closes[1] + 1] + [token_ids.block_start]
    out = radix_server.generate(resume_body(resumed))
    assert_full_hit(out, resumed, token_ids, n_closed=2, page_size=radix_server.page_size)
    assert out["output_ids"] == plain_server.generate(resume_body(resumed))["output_ids"]
    assert_matches_reference(reference, token_ids, resumed, out["output_ids"], SERVER_DEFAULT)


def test_a_prompt_ending_on_a_memento_reprefills_only_its_block(
    default_server, plain_server, tokenizer, token_ids
):
    """The last memento's final token needs its block: that block is prefilled again."""
    prompt = prompt_with_closed_blocks(tokenizer, token_ids, 3)
    default_server.generate(memento_body(prompt, [], in_think=True, memento=opt_in({}), max_new_tokens=0))
    body = memento_body(prompt, [(5, 2)], in_think=True, memento=opt_in({}))
    out = default_server.generate(body)
    last_block_start = max(i for i, t in enumerate(prompt) if t == token_ids.block_start)
    expected = last_block_start + 1 - evicted_before(prompt, token_ids, last_block_start + 1)
    assert out["meta_info"]["cached_tokens"] == expected
    assert out["meta_info"]["memento"]["reused_blocks"] == 2
    assert out["output_ids"] == plain_server.generate(body)["output_ids"]


def test_second_turn_reuses_the_first(default_server, plain_server, reference, tokenizer, token_ids):
    prompt = chat_prompt(tokenizer, "First turn")
    turn1 = default_server.generate(memento_body(prompt, BLOCKS, memento=opt_in({}), max_new_tokens=60))
    history = prompt + turn1["output_ids"]
    follow_up = tokenizer.encode(
        "<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )
    body = memento_body(history + follow_up, [(5, 2)], memento=opt_in({}), max_new_tokens=60)
    out = default_server.generate(body)
    cached = out["meta_info"]["cached_tokens"]
    row = len(history) - evicted_before(history, token_ids, len(history))
    assert row - 1 <= cached <= row, "the first turn's row (prompt, mementos, answer) was not reused"
    assert out["meta_info"]["memento"]["reused_blocks"] == len(BLOCKS)
    assert out["output_ids"] == plain_server.generate(body)["output_ids"]
    assert_matches_reference(reference, token_ids, history + follow_up, out["output_ids"], SERVER_DEFAULT)


def test_parallel_samples_share_the_memento_prefix(default_server, plain_server, tokenizer, token_ids):
    prompt = resumable_prompt(tokenizer, token_ids, 2)
    body = resume_body(prompt)
    body["sampling_params"]["n"] = 4
    outs = default_server.generate(body)
    assert len(outs) == 4
    single = plain_server.generate(resume_body(prompt))["output_ids"]
    for out in outs:
        assert_full_hit(out, prompt, token_ids, n_closed=2)
        assert out["output_ids"] == single


def test_sixteen_forks_hold_the_shared_kv_once(default_server, plain_server, reference, tokenizer, token_ids):
    prompt = resumable_prompt(tokenizer, token_ids, 4)
    default_server.generate(resume_body(prompt, max_new_tokens=0))  # what `s.fork(n)` sends first
    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(default_server.generate, [resume_body(prompt)] * 16))
    shared = len(prompt) - 1 - evicted_before(prompt, token_ids, len(prompt))
    own = []
    for out in outs:
        assert_full_hit(out, prompt, token_ids, n_closed=4)
        stats = out["meta_info"]["memento"]
        assert stats["tree_kv_slots"] >= shared  # the row reads the shared slots from the tree
        own.append(stats["own_kv_slots"])
    held, unshared = shared + sum(own), 16 * shared + sum(own)
    assert held * 4 < unshared, f"forks hold {held} KV slots, {unshared} without sharing"
    assert outs[0]["output_ids"] == plain_server.generate(resume_body(prompt))["output_ids"]
    assert all(o["output_ids"] == outs[0]["output_ids"] for o in outs)
    assert_matches_reference(reference, token_ids, prompt, outs[0]["output_ids"], SERVER_DEFAULT)
    default_server.assert_healthy()


def test_dsl_forks_after_mementos_hit_the_tree(default_server, tokenizer, token_ids):
    import sglang as sgl

    prompt = resumable_prompt(tokenizer, token_ids, 3)
    text = tokenizer.decode(prompt)
    assert tokenizer.encode(text) == prompt, "the prompt must survive a text round trip"

    @sgl.function
    def forks(s, prefix):
        s += prefix
        branches = s.fork(4)
        for branch in branches:
            branch += sgl.gen("step", max_tokens=4, temperature=0)
        s["steps"] = [b["step"] for b in branches]
        s["cached"] = [b.get_meta_info("step")["cached_tokens"] for b in branches]

    state = forks.run(prefix=text, backend=sgl.RuntimeEndpoint(default_server.url))
    shared = len(prompt) - 1 - evicted_before(prompt, token_ids, len(prompt))
    assert state["cached"] == [shared] * 4
    assert len(set(state["steps"])) == 1  # greedy: every branch continues alike


def test_memento_and_plain_requests_do_not_poison_each_other(
    default_server, plain_server, reference, tokenizer, token_ids
):
    """The same ids with Memento on and off, interleaved on one tree, equal fresh servers."""
    prompt = prompt_with_closed_blocks(tokenizer, token_ids, 2)
    on = memento_body(prompt, [(5, 2)], in_think=True, memento=opt_in({}))
    off = memento_body(prompt, [(5, 2)], in_think=True, memento={"enable": False})
    expected_on = plain_server.generate(on)["output_ids"]
    expected_off = plain_server.generate(off)["output_ids"]
    order = [(on, expected_on), (off, expected_off)] * 2 + [(off, expected_off), (on, expected_on)]
    for body, expected in order:
        assert default_server.generate(body)["output_ids"] == expected
    causal = reference.greedy_mismatches(prompt + expected_off, len(prompt), None)
    assert not causal, f"Memento-off output is not plain causal: {causal[:5]}"
    assert expected_on != expected_off, "the two modes agree: the test would prove nothing"


def test_lru_eviction_under_pressure_keeps_forks_exact(pressure_server, reference, tokenizer, token_ids):
    """A pool too small for every cached trace: the tree evicts by LRU while forks hold
    their shared prefix; every output stays exact and nothing leaks."""
    server = pressure_server
    questions = [
        f"Case {i}: " + " ".join(["seven", "primes", "sum"][(i + j) % 3] for j in range(24)) for i in range(6)
    ]
    prompts = [
        prompt_with_closed_blocks(tokenizer, token_ids, 2, q) + [token_ids.block_start] for q in questions
    ]

    def fork_group(prompt):
        server.generate(resume_body(prompt, max_new_tokens=0))
        with ThreadPoolExecutor(3) as pool:
            return prompt, list(pool.map(server.generate, [resume_body(prompt, max_new_tokens=40)] * 3))

    with ThreadPoolExecutor(3) as pool:
        groups = list(pool.map(fork_group, prompts))
    for prompt, outs in groups:
        for out in outs:
            assert_matches_reference(reference, token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
    metrics = requests.get(server.url + "/metrics", timeout=30).text
    counters = re.findall(r"^sglang:evicted_tokens_total(?:\{[^}]*\})? (\S+)", metrics, re.M)
    evicted = sum(map(float, counters))
    evict_lines = [line for line in metrics.splitlines() if "evict" in line and not line.startswith("#")]
    assert evicted > 0, f"the tree never evicted: the pool was not under pressure: {evict_lines}"
    server.assert_healthy()


def tree_tokens_evicted(server) -> float:
    metrics = requests.get(server.url + "/metrics", timeout=30).text
    return sum(
        map(float, re.findall(r"^sglang:memento_tree_tokens_evicted_total\{[^}]*\} (\S+)", metrics, re.M))
    )


def test_forks_inside_a_block_share_it_until_their_mementos_close(
    default_server, plain_server, reference, tokenizer, token_ids
):
    """Forks from inside an open block read its content from the tree; once the last
    of them closes its memento, the block's nodes leave the tree at once."""
    content = tokenizer.encode(" ".join(["seven", "primes"] * 6), add_special_tokens=False)
    prompt = prompt_with_closed_blocks(tokenizer, token_ids, 1, "Fork inside a block") + [
        token_ids.block_start
    ]
    prompt += content
    default_server.generate(resume_body(prompt, max_new_tokens=0))
    before = tree_tokens_evicted(default_server)
    bodies = [
        memento_body(prompt, [], resume_open_block=(n, 2), in_think=True, memento=opt_in({})) for n in (2, 9)
    ]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(default_server.generate, bodies))
    shared = len(prompt) - 1 - evicted_before(prompt, token_ids, len(prompt))
    for body, out in zip(bodies, outs, strict=True):
        assert out["meta_info"]["cached_tokens"] == shared  # the open block's content came from the tree
        assert out["output_ids"] == plain_server.generate(body)["output_ids"]
        assert_matches_reference(reference, token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
    assert outs[0]["output_ids"] != outs[1]["output_ids"]
    # every slot of the block's content (the prompt's tail after `<|block_start|>`) left the tree
    assert tree_tokens_evicted(default_server) - before == len(content)
    default_server.assert_healthy()
