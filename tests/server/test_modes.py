"""SGLang modes next to Memento: each works exactly, or is refused clearly (HTTP 400)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.support.client import (
    SERVER_DEFAULT,
    assert_matches_reference,
    chat_prompt,
    memento_body,
    prompt_with_closed_blocks,
    rule_of,
)
from tests.support.mask_rule import visible_matrix

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


@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "cached_prefix"])
def test_prompt_logprobs_follow_the_memento_mask(masked_server, reference, tokenizer, token_ids, cached):
    """`return_logprob` over a prompt that holds closed blocks: each prompt token's logprob
    is the HF oracle's under the Memento mask (the masked prefill computes them), also when
    the radix tree already holds the prompt."""
    prompt = prompt_with_closed_blocks(tokenizer, token_ids, 3, question=f"Score the prompt {cached}")
    body = {
        "input_ids": prompt,
        "return_logprob": True,
        "logprob_start_len": 0,
        "sampling_params": {
            "max_new_tokens": 1,
            "temperature": 0.0,
            "custom_params": {"memento": {"enable": True}},
        },
    }
    if cached:
        masked_server.generate({**body, "return_logprob": False})
    got = masked_server.generate(body)["meta_info"]["input_token_logprobs"]
    logits = reference.logits(prompt, visible_matrix(prompt, token_ids, **rule_of(None, SERVER_DEFAULT)))
    want = torch.log_softmax(logits.float(), dim=-1)
    assert [entry[1] for entry in got] == prompt
    worst = max(abs(entry[0] - want[t - 1, prompt[t]].item()) for t, entry in enumerate(got) if t > 0)
    assert worst < 2e-3, worst
    # without the mask the tokens after the first memento score differently: the test can fail
    plain = torch.log_softmax(reference.logits(prompt, None).float(), dim=-1)
    assert (
        max(
            abs(plain[t - 1, prompt[t]].item() - want[t - 1, prompt[t]].item()) for t in range(1, len(prompt))
        )
        > 1e-2
    )
