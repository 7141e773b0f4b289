"""Memento servers behind SGLang's router (`sglang-router`): exact, and forks meet their state.

Two identical workers (Memento on server-wide, Memento radix cache, `--enable-metrics`)
start once for this module. sglang-router 0.3.2 re-serialises a `/generate` body and
drops `structural_tag` and `custom_params` (checked below, so a router that starts
forwarding them shows up), so requests here are plain greedy ones. Through a
`cache_aware` router, greedy outputs equal the HF oracle. Grouped forks (3 Memento
states x 4 forks, the states warmed first, as `s.fork(n)` does) go through
`round_robin`, `cache_aware` and `manual` with the `routing_key` header, on flushed
caches: each worker's `sglang:num_requests_total` tells where every group ran, and
`meta_info` whether a fork reused its state.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.prefix_sharing import Workload
from benchmarks.scale_out import (
    Router,
    flush_cache,
    fork_body,
    grouped_forks,
    registered_workers,
    running_router,
    served,
)
from memento_sglang.router import router_command, routing_key, text_routing_key
from tests.support.client import (
    SERVER_DEFAULT,
    assert_matches_reference,
    chat_prompt,
    memento_body,
    prompt_with_closed_blocks,
)
from tests.support.server import ServerProcess, ServerSpec

pytestmark = pytest.mark.server

WORKER_ARGS = (
    "--memento-config", json.dumps({"enable": True, "mask_delimiters": False}),
    "--enable-metrics",
)  # fmt: skip
FORKS = Workload(groups=3, forks=4, closed_blocks=3, block_tokens=24, memento_tokens=4)
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def workers(model_path):
    """Two identical workers, started at once, checked for leaks and stopped at the end."""
    servers = [ServerProcess(ServerSpec(f"router-worker{i}", WORKER_ARGS), model_path) for i in range(2)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
        for server in servers:
            server.assert_healthy()
    finally:
        for server in servers:
            server.stop()


def test_routing_key_names_the_state_a_fork_continues():
    end = 99
    prompt, state = [1, 2, 3], [7, 8, 9, end, 5, 6, end]
    key = routing_key(prompt, state, summary_end_id=end)
    assert routing_key(prompt, [*state, 11, 12], summary_end_id=end) == key  # a fork's own tokens
    assert routing_key(prompt, [*state, 4, end], summary_end_id=end) != key  # one more memento
    assert routing_key(prompt, [7, 0, 9, end, 5, 6, end], summary_end_id=end) != key  # another block
    assert routing_key([1, 2, 4], state, summary_end_id=end) != key
    assert routing_key(prompt, [7, 8], summary_end_id=end) == routing_key(prompt, summary_end_id=end)
    assert routing_key([end, 1], [2], summary_end_id=end) != routing_key([end], [1, 2], summary_end_id=end)
    assert len(key) == 16 and int(key, 16) >= 0
    reasoning = "<|block_start|>b<|block_end|><|summary_start|>m<|summary_end|>"
    assert text_routing_key("q", reasoning + "<|block_start|>more") == text_routing_key("q", reasoning)
    assert text_routing_key("q", "<|block_start|>open") == text_routing_key("q")
    assert text_routing_key("q", reasoning) != text_routing_key("q")
    urls = ["http://a:1", "http://b:2"]
    command = router_command(urls, "manual", 30000, 30001, ["--log-level", "warn"])
    assert command[command.index("--worker-urls") + 1 : command.index("--policy")] == urls
    assert command[command.index("--prometheus-port") + 1] == "30001"
    assert command[command.index("--prometheus-host") + 1] == "127.0.0.1"
    with pytest.raises(ValueError, match="unknown router policy"):
        router_command(["http://a:1"], "cache-aware", 1, 2)


def _greedy(prompt: list[int]) -> dict:
    params = {"temperature": 0.0, "max_new_tokens": 24, "skip_special_tokens": False}
    return {"input_ids": prompt, "sampling_params": params}


def test_cache_aware_router_is_exact(workers, reference, tokenizer, token_ids):
    with running_router([w.url for w in workers], "cache_aware") as router:
        assert registered_workers(router.url) == 2
        plain = chat_prompt(tokenizer, "What is 3 + 5?")
        closed = prompt_with_closed_blocks(tokenizer, token_ids, 3, question="Through the router")
        for prompt, n_closed in ((plain, 0), (closed, 3)):
            out = router.generate(_greedy(prompt))
            assert_matches_reference(reference, token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
            stats = out["meta_info"]["memento"]
            assert stats["blocks_closed"] >= n_closed
            if n_closed:  # the prompt's closed blocks were masked and evicted
                assert stats["tokens_evicted"] > 0
            assert out["output_ids"] == workers[0].generate(_greedy(prompt))["output_ids"]


def test_router_drops_structural_tag_and_custom_params(workers, tokenizer, token_ids):
    """sglang-router 0.3.2 rebuilds the `/generate` body from its own schema: a structural
    tag and `custom_params["memento"]` never reach the worker (docs/scale-out.md)."""
    prompt = chat_prompt(tokenizer, "Force my structure")
    tagged = memento_body(prompt, [(5, 2)], memento={"enable": False}, max_new_tokens=24)
    untagged = {"input_ids": prompt, "sampling_params": {**_greedy(prompt)["sampling_params"]}}
    direct = workers[0].generate(tagged)
    assert "memento" not in direct["meta_info"]  # the opt-out reached the worker
    assert token_ids.summary_end in direct["output_ids"]  # and the tag forced a block
    with running_router([workers[0].url], "round_robin") as router:
        routed = router.generate(tagged)
    assert "memento" in routed["meta_info"], "custom_params now reach the worker: update the docs"
    assert routed["output_ids"] == workers[0].generate(untagged)["output_ids"] != direct["output_ids"]


def _wait_served(workers, before: list[int], expected: int) -> list[int]:
    """Requests each worker finished since `before`, once all `expected` are counted."""
    deadline = time.monotonic() + 10
    while True:
        delta = [a - b for a, b in zip(served([w.url for w in workers]), before, strict=True)]
        if sum(delta) >= expected or time.monotonic() > deadline:
            return delta
        time.sleep(0.2)


def _grouped_forks(router: Router, workers, tokenizer, keyed: bool) -> dict:
    """Every state warmed at once (new states arrive together, so `cache_aware` and
    `min_group` can spread them), then one state's forks at a time, all at once: the
    per-worker request counters tell where each group of forks ran."""
    warm, forks = grouped_forks(tokenizer, FORKS)
    with ThreadPoolExecutor(len(warm)) as pool:
        list(pool.map(lambda w: router.generate(fork_body(w.prompt, 0), w.key if keyed else None), warm))
    cached = full = 0
    placements = []
    for w in warm:
        group = [f for f in forks if f.state == w.state]
        before = served([s.url for s in workers])
        with ThreadPoolExecutor(len(group)) as pool:
            outs = list(
                pool.map(
                    lambda f: router.generate(fork_body(f.prompt, NEW_TOKENS), f.key if keyed else None),
                    group,
                )
            )
        placements.append(_wait_served(workers, before, len(group)))
        cached += sum(o["meta_info"]["cached_tokens"] for o in outs)
        full += sum(o["meta_info"]["memento"]["reused_blocks"] == FORKS.closed_blocks for o in outs)
    return {"cached": cached, "full_hits": full, "placements": placements}


def test_forks_meet_their_state_per_policy(workers, tokenizer):
    results = {}
    for name, policy, extra, keyed in [
        ("round_robin", "round_robin", (), False),
        ("cache_aware", "cache_aware", (), False),
        ("manual_key", "manual", ("--assignment-mode", "min_group"), True),
    ]:
        for w in workers:
            flush_cache(w.url)
        with running_router([w.url for w in workers], policy, extra) as router:
            results[name] = _grouped_forks(router, workers, tokenizer, keyed)
    summary = {name: (r["cached"], r["full_hits"], r["placements"]) for name, r in results.items()}
    n_forks = FORKS.groups * FORKS.forks
    # round robin splits every group of forks over both workers
    assert all(min(p) > 0 for p in results["round_robin"]["placements"]), summary
    # with the key, all forks of a state run on one worker: the one its warm-up ran on,
    # since every fork reuses every memento of the state
    assert all(sorted(p) == [0, FORKS.forks] for p in results["manual_key"]["placements"]), summary
    assert results["manual_key"]["full_hits"] == n_forks, summary
    # at low load cache_aware follows the text prefix (`input_ids` as a string): the same
    assert all(sorted(p) == [0, FORKS.forks] for p in results["cache_aware"]["placements"]), summary
    assert results["cache_aware"]["full_hits"] == n_forks, summary
    for name in ("cache_aware", "manual_key"):
        assert results[name]["cached"] > results["round_robin"]["cached"], summary


def test_manual_policy_serves_requests_without_a_key(workers, tokenizer, token_ids):
    with running_router([w.url for w in workers], "manual") as router:
        prompt = chat_prompt(tokenizer, "No key at all")
        assert router.generate(fork_body(prompt, 4))["meta_info"]["completion_tokens"] == 4
        key = routing_key(prompt, summary_end_id=token_ids.summary_end)
        assert router.generate(fork_body(prompt, 4), key)["meta_info"]["completion_tokens"] == 4
