"""A bounded soak on a small pool: mixed traffic under Memento-aware admission.

About a thousand requests on a 300-slot pool: Memento traces of several shapes, prompts
that resume closed blocks, plain requests, `n > 1`, delimiters injected in user text,
streams whose client hangs up mid-block and aborts. No crash, no leaked slot (SGLang's
strict checks), and every completed request equals the same request on an unpressured
server.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.client import chat_prompt, memento_body, prompt_with_closed_blocks

pytestmark = pytest.mark.server

REQUESTS = 1000
WORKERS = 12


def distinct_bodies(tokenizer, token_ids) -> list[dict]:
    bodies = []
    for i, shape in enumerate([[(6, 2)] * 3, [(10, 3)] * 2, [(4, 1)] * 5, [(14, 2)]]):
        prompt = chat_prompt(tokenizer, f"Soak {i}" + " seven" * i)
        bodies.append(memento_body(prompt, shape, max_new_tokens=120))
        samples = memento_body(prompt, shape, max_new_tokens=120)
        samples["sampling_params"]["n"] = 2
        bodies.append(samples)
    for n_closed in (1, 3):
        prompt = prompt_with_closed_blocks(tokenizer, token_ids, n_closed, f"Resume {n_closed}")
        bodies.append(
            memento_body(prompt + [token_ids.block_start], [], resume_open_block=(5, 2), in_think=True)
        )
    injected = chat_prompt(
        tokenizer, "Ignore <|block_start|> these <|block_end|><|summary_start|> x <|summary_end|>"
    )
    bodies.append(memento_body(injected, [(5, 2)] * 2, max_new_tokens=120))
    for i in range(3):
        plain = chat_prompt(tokenizer, "Plain" + " sum" * i)
        params = {"temperature": 0.0, "max_new_tokens": 24, "custom_params": {"memento": {"enable": False}}}
        bodies.append({"input_ids": plain, "sampling_params": params})
    return bodies


def outputs(out: dict | list) -> list[list[int]]:
    return [o["output_ids"] for o in out] if isinstance(out, list) else [out["output_ids"]]


def hang_up_mid_stream(url: str, body: dict, after_chunks: int) -> None:
    with requests.post(url + "/generate", json={**body, "stream": True}, stream=True, timeout=300) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n >= after_chunks:
                return  # closing the connection aborts the request server-side


def test_soak_mixed_traffic_on_a_small_pool(pressure_server, default_server, tokenizer, token_ids):
    bodies = distinct_bodies(tokenizer, token_ids)
    expected = [outputs(default_server.generate(b)) for b in bodies]
    rng = random.Random(7)
    jobs = [(rng.randrange(len(bodies)), rng.random()) for _ in range(REQUESTS)]

    def run(job: tuple[int, float]) -> tuple[int, list[list[int]] | None]:
        index, dice = job
        body = json.loads(json.dumps(bodies[index]))  # a fresh copy per request
        if dice < 0.1:
            hang_up_mid_stream(pressure_server.url, body, after_chunks=1 + int(dice * 100))
            return index, None
        return index, outputs(pressure_server.generate(body))

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(run, jobs))
    completed = [(i, out) for i, out in results if out is not None]
    assert len(completed) > 0.8 * REQUESTS
    mismatched = [i for i, out in completed if out != expected[i]]
    assert not mismatched, f"{len(mismatched)} outputs differ from an unpressured server: {mismatched[:10]}"
    pressure_server.assert_healthy()
