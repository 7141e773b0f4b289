"""Memento-aware admission under real KV pressure: more requests run at once, exactly."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support.client import SERVER_DEFAULT, assert_matches_reference, chat_prompt, memento_body

pytestmark = pytest.mark.server

BLOCKS = [(20, 3)] * 5
ANSWER = 4
#: the exact output length of BLOCKS (4 delimiters per cycle, then </think> + answer + EOS room)
BUDGET = sum(b + m + 4 for b, m in BLOCKS) + ANSWER + 4


def metric(server, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def run_wave(server, prompts, memento: dict) -> tuple[list[dict], int]:
    """Send every prompt at once; return the outputs and the most requests decoding together."""
    bodies = [
        memento_body(p, BLOCKS, answer_tokens=ANSWER, max_new_tokens=BUDGET, memento=memento) for p in prompts
    ]
    log_start = len(server.log_text())
    with ThreadPoolExecutor(len(bodies)) as pool:
        outs = list(pool.map(server.generate, bodies))
    running = re.findall(r"Decode batch, #running-req: (\d+)", server.log_text()[log_start:])
    return outs, max(map(int, running))


def test_admission_runs_more_requests_under_pressure_and_stays_exact(
    pressure_server, reference, tokenizer, token_ids
):
    """A 300-slot pool: SGLang's own estimate reserves each request's whole output; the
    Memento estimate, learned from the blocks this server closed, reserves its mementos and
    one open block. More requests run at once, SGLang retracts when the discounted tail
    over-commits, and every output equals the HF oracle (strict memory checks on)."""
    server = pressure_server
    warm = [chat_prompt(tokenizer, f"Warm up {i}") for i in range(3)]
    run_wave(server, warm[:1], {})  # the server learns cycle lengths from closed blocks
    run_wave(server, warm[1:], {})
    prompts = [chat_prompt(tokenizer, "Pressure" + " seven" * (i % 3)) for i in range(10)]
    retracted_before = metric(server, "sglang:num_retracted_requests_total")
    stock_outs, stock_running = run_wave(server, prompts, {"admission_estimate": False})
    outs, running = run_wave(server, prompts, {})
    assert running > stock_running, (running, stock_running)
    for prompt, out, stock in zip(prompts, outs, stock_outs, strict=True):
        assert out["output_ids"] == stock["output_ids"]
        assert out["meta_info"]["memento"]["blocks_evicted"] == len(BLOCKS)
        assert_matches_reference(reference, token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
    retracted = metric(server, "sglang:num_retracted_requests_total") - retracted_before
    print(f"max running: {running} (stock estimate {stock_running}), retracted {retracted:.0f}")
    assert retracted > 0, "SGLang retracted nothing: the pool was not under pressure"
    # a retracted request's compacted row went into the tree: its re-prefill matched its
    # own mementos instead of recomputing the blocks it had already evicted
    again = [o["meta_info"] for o in [*outs, *stock_outs] if o["meta_info"]["num_retractions"] > 0]
    assert again and any(m["memento"]["reused_blocks"] > 0 for m in again), again
    server.assert_healthy()
