"""Prompts that already hold closed blocks: masked prefill, then compaction (exact)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.client import (
    CHUNKED_MASK_BUDGET,
    SERVER_DEFAULT,
    assert_matches_reference,
    chat_prompt,
    memento_body,
    opt_in,
    prompt_with_closed_blocks,
    run_and_check,
)
from tests.support.mask_rule import visible_matrix

pytestmark = pytest.mark.server


@pytest.mark.parametrize("n_closed", [0, 1, 3, 5])
@pytest.mark.parametrize(
    "memento",
    [{}, {"mask_delimiters": True}, {"keep_last_n_blocks": 2}],
    ids=["content", "delims", "keep2"],
)
def test_prompt_with_closed_blocks(masked_server, reference, tokenizer, token_ids, n_closed, memento):
    prompt = prompt_with_closed_blocks(tokenizer, token_ids, n_closed)
    _, stats = run_and_check(
        masked_server, reference, token_ids, prompt, [(6, 2), (5, 2)], memento,
        prompt_blocks=n_closed, in_think=True,
    )  # fmt: skip
    keep = memento.get("keep_last_n_blocks", 0)
    assert stats["blocks_evicted"] == max(0, n_closed + 2 - keep)
    if n_closed and keep == 0:  # the prompt's own blocks left the KV too
        assert stats["tokens_evicted"] > 5 + 6 * (n_closed - 1)


def test_masked_chunks_fit_the_mask_budget(chunked_server, reference, tokenizer, token_ids):
    """The `chunked` server's `prefill_mask_budget` (600 entries) cuts a long masked prompt
    into chunks whose mask fits, smaller than its 16-token chunks as the prefix grows; the
    output stays exact."""
    log_start = len(chunked_server.log_text())
    prompt = prompt_with_closed_blocks(tokenizer, token_ids, 5, question="A prompt no earlier test cached")
    run_and_check(
        chunked_server, reference, token_ids, prompt, [(6, 2)], {}, prompt_blocks=5, in_think=True
    )  # fmt: skip
    log = chunked_server.log_text()[log_start:]
    entries = [int(e) for e in re.findall(r"\[memento\] masked prefill: .*?, (\d+) mask entries", log)]
    assert entries and max(entries) <= CHUNKED_MASK_BUDGET
    new_tokens = [int(n) for n in re.findall(r"Prefill batch, #new-seq: 1, #new-token: (\d+)", log)]
    assert len(prompt) > 100 and min(new_tokens) < 16, new_tokens


@pytest.mark.parametrize("n_closed", [0, 2])
def test_restart_mode_recomputes_each_memento(masked_server, reference, tokenizer, token_ids, n_closed):
    """`restart_mode`: a closed memento's KV is recomputed without its block (oracle, stepwise)."""
    if n_closed:
        prompt, in_think = prompt_with_closed_blocks(tokenizer, token_ids, n_closed), True
    else:
        prompt, in_think = chat_prompt(tokenizer, "Restart every memento"), False
    blocks = [(6, 2), (5, 3), (4, 2)]
    out = masked_server.generate(
        memento_body(prompt, blocks, memento=opt_in({"restart_mode": True}), in_think=in_think)
    )
    ids = prompt + out["output_ids"]
    mismatches = reference.greedy_mismatches_stepwise(
        ids, len(prompt), lambda seen: visible_matrix(seen, token_ids, restart_mode=True)
    )
    assert not mismatches, f"server != restart-mode reference at {mismatches[:5]}"
    stats = out["meta_info"]["memento"]
    assert stats["blocks_closed"] == stats["blocks_evicted"] == n_closed + len(blocks)
    final = visible_matrix(ids[:-1], token_ids, restart_mode=True)[-1]
    assert stats["live_kv_tokens"] == sum(final)
    normal = masked_server.generate(memento_body(prompt, blocks, memento=opt_in({}), in_think=in_think))
    assert normal["output_ids"] != out["output_ids"], "restart changed nothing: the test proves nothing"


def test_resume_equals_uninterrupted(masked_server, tokenizer, token_ids):
    prompt = chat_prompt(tokenizer, "Resume me later")
    blocks = [(8, 2), (6, 3), (7, 2), (5, 2)]
    full = masked_server.generate(memento_body(prompt, blocks, memento=opt_in({})))["output_ids"]
    closes = [i for i, t in enumerate(full) if t == token_ids.summary_end]
    for n_done in (1, 2, 3):
        cut = closes[n_done - 1] + 1
        body = memento_body(prompt + full[:cut], blocks[n_done:], memento=opt_in({}), in_think=True)
        resumed = masked_server.generate(body)
        assert resumed["output_ids"] == full[cut:], f"resume after {n_done} mementos diverged"
        assert resumed["meta_info"]["memento"]["blocks_closed"] == len(blocks)


def test_retraction_is_exact(retract_server, default_server, reference, tokenizer, token_ids):
    """Retracted requests re-prefill prompt + output through the mask and compact again."""
    prompts = [chat_prompt(tokenizer, "Retract" + " seven" * i) for i in range(3)]
    prompts.append(prompt_with_closed_blocks(tokenizer, token_ids, 2))
    bodies = [
        memento_body(p, [(12, 3)] * 3, memento=opt_in({}), in_think=i == 3) for i, p in enumerate(prompts)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        outs = list(pool.map(retract_server.generate, bodies))
    retractions = [
        line for line in retract_server.log_text().splitlines()
        if "Testing retraction. #retracted_reqs:" in line and "#retracted_reqs: 0" not in line
    ]  # fmt: skip
    assert retractions, "SGLang retracted nothing; the test would prove nothing"
    # retracted rows went into the Memento tree: re-admissions matched their own mementos
    assert any(out["meta_info"]["memento"]["reused_blocks"] > 0 for out in outs), [
        out["meta_info"]["memento"] for out in outs
    ]
    for prompt, body, out in zip(prompts, bodies, outs, strict=True):
        assert_matches_reference(reference, token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
        assert out["output_ids"] == default_server.generate(body)["output_ids"]  # == roomy, unretracted
    retract_server.assert_healthy()


def test_batch_mixing_masked_and_unmasked_requests(masked_server, reference, tokenizer, token_ids):
    """Masked prefills, plain Memento prefills and Memento-off requests, sent together."""
    masked = [prompt_with_closed_blocks(tokenizer, token_ids, n) for n in (1, 3, 4)]
    plain = [chat_prompt(tokenizer, "No blocks here" + " seven" * i) for i in range(3)]
    bodies = [memento_body(p, [(5, 2)], memento=opt_in({}), in_think=True) for p in masked]
    bodies += [memento_body(p, [(5, 2)], memento=opt_in({})) for p in plain]
    off = memento_body(masked[1], [(5, 2)], memento={"enable": False}, in_think=True)
    log_start = len(masked_server.log_text())
    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        outs = list(pool.map(masked_server.generate, [*bodies, off]))
    for prompt, out in zip(masked + plain, outs, strict=False):
        assert_matches_reference(reference, token_ids, prompt, out["output_ids"], SERVER_DEFAULT)
    causal = reference.greedy_mismatches(masked[1] + outs[-1]["output_ids"], len(masked[1]), None)
    assert not causal, f"a Memento-off request in a masked batch is not plain causal: {causal[:5]}"
    assert "memento" not in outs[-1]["meta_info"]
    batches = re.findall(r"Prefill batch, #new-seq: (\d+)", masked_server.log_text()[log_start:])
    assert max(map(int, batches)) > 1, "no prefill batch held two of these requests"
