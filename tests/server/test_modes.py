"""SGLang modes next to Memento: each works exactly, or is refused clearly (HTTP 400)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from support.client import SERVER_DEFAULT, assert_matches_reference, chat_prompt, memento_body

pytestmark = pytest.mark.server


def beam_body(prompt: list[int], *, memento: dict | None = None) -> dict:
    params = {"max_new_tokens": 40, "beam_width": 2, "n": 2, "temperature": 0.0}
    if memento is not None:
        params["custom_params"] = {"memento": memento}
    return {"input_ids": prompt, "sampling_params": params}


def beams(out: dict) -> list[list[int]]:
    return [beam["output_ids"] for beam in out["meta_info"]["beam_results"]]


def test_beam_search_next_to_compacting_requests(
    default_server, plain_server, reference, tokenizer, token_ids
):
    """A beam request with Memento off decodes in the same batches as requests whose rows
    are being compacted; a beam request that Memento would track is refused (HTTP 400)."""
    prompts = [chat_prompt(tokenizer, "Beam neighbour" + " seven" * i) for i in range(3)]
    bodies = [memento_body(p, [(6, 2)] * 4) for p in prompts]
    beam_prompt = chat_prompt(tokenizer, "Search with two beams")
    beam = beam_body(beam_prompt, memento={"enable": False})
    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        futures = [pool.submit(default_server.generate, b) for b in [*bodies, beam]]
        outs = [f.result() for f in futures]
    for prompt, out in zip(prompts, outs, strict=False):
        assert out["meta_info"]["memento"]["blocks_evicted"] == 4
        assert_matches_reference(reference, token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
    alone = plain_server.generate(beam_body(beam_prompt))
    assert beams(outs[-1]) == beams(alone)
    assert len(beams(alone)) == 2

    refused = default_server.post("/generate", beam_body(beam_prompt))
    assert refused.status_code == 400, refused.text
    assert "beam_width" in refused.text and "Memento" in refused.text
    default_server.assert_healthy()
