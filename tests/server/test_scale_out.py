"""Tensor and data parallel servers (`--tp-size 2`, `--dp-size 2`) on CPU: exact against
the HF oracle, Memento's stats and metrics counted once per request."""

from __future__ import annotations

import re

import pytest
import requests

from memento_sglang.cpu import THREADS_BIND_ENV
from tests.support.client import (
    chat_prompt,
    mixed_jobs,
    prompt_with_closed_blocks,
    run_and_check,
    run_concurrently_and_check,
)

pytestmark = pytest.mark.server

BLOCKS = [(9, 3), (14, 2), (6, 4), (11, 3)]


def _evicted_counter(server) -> float:
    text = requests.get(server.url + "/metrics", timeout=30).text
    pattern = r"^sglang:memento_blocks_evicted_total(?:\{[^}]*\})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_the_launcher_binds_each_rank_to_its_own_cores(parallel_server):
    assert re.search(rf"{THREADS_BIND_ENV}=\S+\|\S+", parallel_server.log_text())


def test_decode_eviction_and_masked_prefill_are_exact(parallel_server, reference, tokenizer, token_ids):
    prompt = chat_prompt(tokenizer, "What is 3 + 5?")
    _, stats = run_and_check(parallel_server, reference, token_ids, prompt, BLOCKS)
    assert stats["blocks_evicted"] == len(BLOCKS)
    closed = prompt_with_closed_blocks(tokenizer, token_ids, 3)
    _, stats = run_and_check(parallel_server, reference, token_ids, closed, BLOCKS[:2], prompt_blocks=3)
    assert stats["blocks_evicted"] == 5


def test_concurrent_requests_are_exact_and_counted_once(parallel_server, reference, tokenizer, token_ids):
    """Requests spread over the ranks (data parallel) or run on every shard (tensor
    parallel); the plugin's counters grow by each request's own stats, once."""
    before = _evicted_counter(parallel_server)
    jobs = mixed_jobs(tokenizer, "Scale out question", step=5, keeps=2)
    outs = run_concurrently_and_check(parallel_server, reference, token_ids, jobs)
    evicted = sum(out["meta_info"]["memento"]["blocks_evicted"] for out in outs)
    assert evicted > 0 and _evicted_counter(parallel_server) - before == evicted
    if parallel_server.spec.name == "dp2":
        assert {out["meta_info"].get("dp_rank") for out in outs} == {0, 1}
