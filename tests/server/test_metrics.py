"""Memento counters on SGLang's Prometheus endpoint agree with the requests' own stats."""

from __future__ import annotations

import re

import pytest
import requests

from tests.support.client import chat_prompt, memento_body, opt_in

pytestmark = pytest.mark.server

NAMES = ("blocks_closed_total", "blocks_evicted_total", "tokens_evicted_total")


def scrape(server) -> dict[str, float]:
    text = requests.get(server.url + "/metrics", timeout=30).text
    values = {}
    for name in (
        *NAMES,
        "restarts_total",
        "kv_tokens_moved_total",
        "kv_tokens_saved",
        "decode_steps_total",
        "compaction_seconds_total",
    ):
        found = re.findall(rf"^sglang:memento_{name}\{{[^}}]*\}} (\S+)$", text, flags=re.M)
        assert found, f"sglang:memento_{name} missing from /metrics"
        values[name] = sum(map(float, found))
    return values


def test_counters_match_request_stats(default_server, tokenizer):
    before = scrape(default_server)
    stats, decoded = [], 0
    for i, blocks in enumerate([[(6, 2), (5, 2)], [(4, 3)] * 3]):
        body = memento_body(chat_prompt(tokenizer, f"Count me {i}"), blocks, memento=opt_in({}))
        meta = default_server.generate(body)["meta_info"]
        stats.append(meta["memento"])
        decoded += meta["completion_tokens"] - 1  # the first token comes from the prefill
    after = scrape(default_server)
    assert after["blocks_closed_total"] - before["blocks_closed_total"] == sum(
        s["blocks_closed"] for s in stats
    )
    assert after["blocks_evicted_total"] - before["blocks_evicted_total"] == sum(
        s["blocks_evicted"] for s in stats
    )
    assert after["tokens_evicted_total"] - before["tokens_evicted_total"] == sum(
        s["tokens_evicted"] for s in stats
    )
    assert after["kv_tokens_moved_total"] == before["kv_tokens_moved_total"]  # page size 1: zero copy
    steps = after["decode_steps_total"] - before["decode_steps_total"]
    assert steps >= decoded  # one request at a time: a step per decoded token at least
    assert after["compaction_seconds_total"] > before["compaction_seconds_total"]
