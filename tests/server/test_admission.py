"""Memento-aware admission under real KV pressure: more requests run at once, exactly."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from memento_sglang.sglang_plugin.server_log import decode_steps
from tests.support.client import SERVER_DEFAULT, assert_matches_reference, chat_prompt, memento_body

pytestmark = pytest.mark.server

BLOCKS = [(20, 3)] * 5
ANSWER = 4
#: the exact output length of BLOCKS (4 delimiters per cycle, then </think> + answer + EOS room)
BUDGET = sum(b + m + 4 for b, m in BLOCKS) + ANSWER + 4


def metric(server, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def memento_wave(prompts, memento: dict) -> list[dict]:
    return [
        memento_body(p, BLOCKS, answer_tokens=ANSWER, max_new_tokens=BUDGET, memento=memento) for p in prompts
    ]


def send_together(server, bodies: list[dict]) -> tuple[list[dict], int]:
    """Send every body at once; return the outputs and the most requests decoding together."""
    log_start = len(server.log_text())
    with ThreadPoolExecutor(len(bodies)) as pool:
        outs = list(pool.map(server.generate, bodies))
    running = [r for r, _ in decode_steps(server.log_text()[log_start:])]
    return outs, max(running)


def test_admission_runs_more_requests_under_pressure_and_stays_exact(
    pressure_server, reference, tokenizer, token_ids
):
    """A 300-slot pool: SGLang's own estimate reserves each request's whole output; the
    Memento estimate, learned from the blocks this server's model closed, reserves its
    mementos and one open block. More requests run at once, every output equals the HF
    oracle, and strict memory checks stay on."""
    server = pressure_server
    warm = [chat_prompt(tokenizer, f"Warm up {i}") for i in range(3)]
    send_together(server, memento_wave(warm[:1], {}))  # the server learns cycle lengths
    send_together(server, memento_wave(warm[1:], {}))
    prompts = [chat_prompt(tokenizer, "Pressure" + " seven" * (i % 3)) for i in range(10)]
    stock_outs, stock_running = send_together(server, memento_wave(prompts, {"admission_estimate": False}))
    outs, running = send_together(server, memento_wave(prompts, {}))
    assert running > stock_running, (running, stock_running)
    for prompt, out, stock in zip(prompts, outs, stock_outs, strict=True):
        assert out["output_ids"] == stock["output_ids"]
        stats = out["meta_info"]["memento"]
        assert stats["blocks_evicted"] == len(BLOCKS)
        # the bound held: the request never grew past what admission reserved for it
        assert (
            stats["admission_growth_bound"]
            >= stats["peak_live_kv_tokens"] - stats["admission_live_kv_tokens"]
        )
        assert_matches_reference(reference, token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
    server.assert_healthy()


def test_mixed_traffic_retracts_for_real_and_stays_exact(
    pressure_server, plain_server, reference, tokenizer, token_ids
):
    """Plain requests (SGLang's early-stop bet) next to Memento ones overfill the pool:
    SGLang retracts for real. Memento outputs equal the oracle, plain ones equal an
    unpressured server, and nothing leaks."""
    server = pressure_server
    prompts = [chat_prompt(tokenizer, "Mixed" + " primes" * (i % 4)) for i in range(6)]
    bodies = memento_wave(prompts, {})
    plain_prompts = [chat_prompt(tokenizer, "Plain" + " sum" * i) for i in range(6)]
    plain = [
        {"input_ids": p, "sampling_params": {"temperature": 0.0, "max_new_tokens": 120, "ignore_eos": True}}
        for p in plain_prompts
    ]
    before = metric(server, "sglang:num_retracted_requests_total")
    outs, _ = send_together(server, [*bodies, *plain])
    assert metric(server, "sglang:num_retracted_requests_total") > before, "nothing was retracted"
    for prompt, out in zip(prompts, outs, strict=False):
        assert_matches_reference(reference, token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
    for body, out in zip(plain, outs[len(bodies) :], strict=True):
        body = {**body, "sampling_params": {**body["sampling_params"], "custom_params": None}}
        assert out["output_ids"] == plain_server.generate(body)["output_ids"]
    server.assert_healthy()


def test_priority_preemption_of_memento_requests_is_exact(priority_server, default_server, tokenizer):
    """`--enable-priority-scheduling` on a 300-slot pool: a high-priority request with a long
    prompt preempts running Memento requests (their rows keep their work, the batch is
    reserved again without them), and every output equals the roomy server's."""
    server = priority_server
    warm = [chat_prompt(tokenizer, f"Priority warm up {i}") for i in range(3)]
    send_together(server, memento_wave(warm[:1], {}))  # the server learns cycle lengths
    send_together(server, memento_wave(warm[1:], {}))
    before = metric(server, "sglang:memento_retracted_output_tokens_total")
    # 8 blocks: prompt + max_new_tokens stays under the pool, which SGLang would clip it to
    long_blocks = [(20, 3)] * 8
    low = [
        memento_body(chat_prompt(tokenizer, "Low priority" + " seven" * i), long_blocks,
                     answer_tokens=ANSWER, max_new_tokens=8 * 27 + ANSWER + 4)
        for i in range(6)
    ]  # fmt: skip
    urgent = memento_wave([chat_prompt(tokenizer, "Urgent" + " eight" * 20)], {})[0]
    log_start = len(server.log_text())
    with ThreadPoolExecutor(len(low) + 1) as pool:
        waiting = [pool.submit(server.generate, {**body, "priority": 0}) for body in low]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # send it while several low-priority rows decode
            running = [r for r, _ in decode_steps(server.log_text()[log_start:])]
            if running and running[-1] >= 2:
                break
            time.sleep(0.02)
        first = pool.submit(server.generate, {**urgent, "priority": 100}).result()
        outs = [f.result() for f in waiting]
    assert metric(server, "sglang:memento_retracted_output_tokens_total") > before, "nothing was preempted"
    for body, out in zip([*low, urgent], [*outs, first], strict=True):
        assert out["output_ids"] == default_server.generate(body)["output_ids"]
    server.assert_healthy()
