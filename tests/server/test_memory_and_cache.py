"""Radix cache never poisoned; no slot leaked; abort mid-block frees everything."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.support.client import chat_prompt, memento_body

pytestmark = pytest.mark.server

BLOCKS = [(10, 2), (8, 3), (12, 2)]


def plain_body(input_ids, n=10):
    """A non-Memento request (the servers enable Memento by default)."""
    return {
        "input_ids": input_ids,
        "sampling_params": {
            "temperature": 0.0,
            "max_new_tokens": n,
            "skip_special_tokens": False,
            "custom_params": {"memento": {"enable": False}},
        },
    }


def test_plain_requests_sharing_prefixes_are_not_poisoned(
    default_server, plain_server, reference, tokenizer, token_ids
):
    """After Memento requests, plain requests over their prompts + outputs hit the radix
    cache and still return what a server without a radix cache returns (and HF)."""
    prompt = chat_prompt(tokenizer, "Poison check: what is 17 + 25?")
    out = default_server.generate(memento_body(prompt, BLOCKS))
    assert out["meta_info"]["memento"]["blocks_evicted"] == 3
    generated = out["output_ids"]
    cut_points = [2, 12, 20, len(generated) - 3]  # inside/after the evicted blocks
    for k in cut_points:
        body = plain_body(prompt + generated[:k])
        ours = default_server.generate(body)
        fresh = plain_server.generate(body)
        assert ours["output_ids"] == fresh["output_ids"], f"poisoned at prefix +{k}"
        assert "memento" not in ours["meta_info"]
    # the prompt prefix itself is still cached and reused
    again = default_server.generate(plain_body(prompt, 4))
    assert again["meta_info"]["cached_tokens"] >= len(prompt) - 1
    ids = prompt + again["output_ids"]
    assert not reference.greedy_mismatches(ids, len(prompt), None)
    default_server.assert_healthy()


def test_memento_disabled_per_request(default_server, plain_server, tokenizer):
    prompt = chat_prompt(tokenizer, "No memento for me")
    body = memento_body(prompt, BLOCKS, memento={"enable": False})
    ours = default_server.generate(body)
    assert "memento" not in ours["meta_info"]
    body_plain = memento_body(prompt, BLOCKS, memento={"enable": False})
    assert plain_server.generate(body_plain)["output_ids"] == ours["output_ids"]


def test_abort_mid_block_frees_everything(default_server, tokenizer, token_ids):
    prompt = chat_prompt(tokenizer, "A long thought that will be interrupted")
    body = memento_body(prompt, [(6, 2), (3000, 2)], max_new_tokens=3000, stream=True, rid="abort-me")
    seen: list[int] = []

    def consume():
        with requests.post(default_server.url + "/generate", json=body, stream=True, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith(b"data:") and line != b"data: [DONE]":
                    chunk = json.loads(line[5:])
                    seen[:] = chunk.get("output_ids", seen)
                    if chunk["meta_info"].get("finish_reason"):
                        seen.append(-1)
                        return

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 120
    while token_ids.block_start not in seen[12:] or len(seen) < 30:  # inside the second block
        assert time.monotonic() < deadline, "stream never reached the second block"
        time.sleep(0.05)
    assert default_server.post("/abort_request", {"rid": "abort-me"}).ok
    reader.join(timeout=60)
    assert seen and seen[-1] == -1, "aborted request did not finish"
    default_server.assert_healthy()  # strict idle leak check + page invariants ran clean


def test_stats_in_every_response_chunk(default_server, tokenizer):
    prompt = chat_prompt(tokenizer, "Stream the stats")
    body = memento_body(prompt, BLOCKS, stream=True)
    closed = []
    with requests.post(default_server.url + "/generate", json=body, stream=True, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith(b"data:") and line != b"data: [DONE]":
                closed.append(json.loads(line[5:])["meta_info"]["memento"]["blocks_closed"])
    assert closed == sorted(closed) and closed[0] == 0 and closed[-1] == 3
