"""The oracle cases on a GPU server, per attention backend and page size; skipped without CUDA.

In float32 (Triton masks and decodes in float32) the server's greedy tokens must equal the
HF reference exactly, as on CPU. FlashInfer and the GPU's default decode backend (FA3 on
Hopper, trtllm_mha on Blackwell) run in bfloat16, where greedy tokens of a random tiny
model may differ from a float32 reference at near-ties: there the Memento stats (computed
by the oracle's mask rule from the tokens the server produced) must match exactly, and
every server must stay healthy (leak and page checks on).
"""

from __future__ import annotations

import pytest
import torch

from tests.support.client import (
    SERVER_DEFAULT,
    chat_prompt,
    expected_stats,
    memento_body,
    opt_in,
    prompt_with_closed_blocks,
    run_and_check,
)
from tests.support.server import ServerProcess, ServerSpec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

MEMENTO_ON = '{"enable": true, "mask_delimiters": false}'
CASES = {
    "triton-fp32-page1": "--attention-backend triton --dtype float32",
    "triton-fp32-page16": "--attention-backend triton --dtype float32 --page-size 16",
    "flashinfer-bf16-page64": "--attention-backend flashinfer --dtype bfloat16 --page-size 64",
    # nothing forced: Memento masks prefill on FlashInfer, decode keeps the GPU's default
    "default-decode-bf16": "--dtype bfloat16",
}


@pytest.fixture(scope="module", params=list(CASES))
def gpu_server(request, model_path):
    flags = (
        "--memento-config", MEMENTO_ON, "--mem-fraction-static", "0.3", "--cuda-graph-max-bs", "8",
        *CASES[request.param].split(),
    )  # fmt: skip
    server = ServerProcess(ServerSpec(f"gpu-{request.param}", flags), model_path)
    server.start()
    try:
        server.wait_ready(timeout=600)
        yield server
        server.assert_healthy()
    finally:
        server.stop()


def test_decode_eviction_and_masked_prefill(gpu_server, reference, tokenizer, token_ids):
    exact = "fp32" in gpu_server.spec.name
    cases = [
        (chat_prompt(tokenizer, "What is 3 + 5?"), [(9, 3), (14, 2), (6, 4)], 0),
        (prompt_with_closed_blocks(tokenizer, token_ids, 3), [(6, 2)], 3),
    ]
    for prompt, blocks, prompt_blocks in cases:
        kw = {"in_think": True} if prompt_blocks else {}
        if exact:
            run_and_check(gpu_server, reference, token_ids, prompt, blocks, prompt_blocks=prompt_blocks, **kw)
            continue
        out = gpu_server.generate(memento_body(prompt, blocks, memento=opt_in({}), **kw))
        stats = out["meta_info"]["memento"]
        expected = expected_stats(token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
        assert {k: stats[k] for k in expected} == expected
        assert stats["blocks_closed"] == prompt_blocks + len(blocks)


def test_radix_reuse_is_stable(gpu_server, token_ids, tokenizer):
    """The same trace twice: the second is served through its mementos, same tokens."""
    prompt = prompt_with_closed_blocks(tokenizer, token_ids, 4) + [token_ids.block_start]
    body = memento_body(prompt, [], resume_open_block=(5, 2), in_think=True, memento=opt_in({}))
    first, second = gpu_server.generate(body), gpu_server.generate(body)
    assert second["output_ids"] == first["output_ids"]
    assert second["meta_info"]["cached_tokens"] > 0
