"""Token-exact structure in every grammar mode: xgrammar structural tags and llguidance Lark.

The oracle for a grammar: every generated token is the HF reference's argmax among the
tokens an independent llguidance matcher allows at that step. (llguidance keeps free
text valid UTF-8, xgrammar's `any_tokens` does not, so the two may differ on a model
that emits stray bytes, as the random tiny model does.)
"""

from __future__ import annotations

import llguidance
import llguidance.hf
import numpy as np
import pytest
import torch
from llguidance import LLMatcher

from memento_sglang.frontend.lark_grammar import memento_lark_grammar
from memento_sglang.frontend.structural_tag import MEMENTO_TOKENS, BlockBudget
from memento_sglang.frontend.trace import MementoTrace
from tests.support.client import SERVER_DEFAULT, chat_prompt, memento_body
from tests.support.mask_rule import visible_matrix

pytestmark = pytest.mark.server

SHAPE = [(7, 3), (4, 2), (6, 1)]


def allowed_ids(matcher, vocab: int) -> torch.Tensor:
    bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint32)
    allowed = torch.zeros(vocab, dtype=torch.bool)
    for i in range(min(vocab, 32 * len(bits))):
        allowed[i] = bool((bits[i // 32] >> (i % 32)) & 1)
    return allowed


def lengths_between(ids: list[int], opener: int, closer: int) -> list[int]:
    starts = [i for i, t in enumerate(ids) if t == opener]
    ends = [i for i, t in enumerate(ids) if t == closer]
    return [end - start - 1 for start, end in zip(starts, ends, strict=True)]


def lark_body(prompt: list[int]) -> dict:
    body = memento_body(prompt, SHAPE)
    del body["sampling_params"]["structural_tag"]
    body["sampling_params"]["ebnf"] = memento_lark_grammar([BlockBudget(*b) for b in SHAPE], answer_tokens=4)
    return body


@pytest.mark.parametrize("question", ["Add the primes", "Count the apples twice"])
def test_llguidance_single_id_delimiters_budgets_and_the_grammar_oracle(
    question, llguidance_server, reference, tokenizer, token_ids
):
    prompt = chat_prompt(tokenizer, question)
    lark = llguidance_server.generate(lark_body(prompt))
    ids = lark["output_ids"]
    delimiters = {t: tokenizer.convert_tokens_to_ids(t) for t in MEMENTO_TOKENS}
    trace = MementoTrace.from_token_ids(ids, delimiters, lambda run: tokenizer.decode(run))
    assert len(trace.blocks) == len(SHAPE)
    blocks = lengths_between(ids, token_ids.block_start, token_ids.block_end)
    mementos = lengths_between(ids, token_ids.summary_start, token_ids.summary_end)
    assert all(n <= budget for n, (budget, _) in zip(blocks, SHAPE, strict=True))
    assert all(n <= budget for n, (_, budget) in zip(mementos, SHAPE, strict=True))
    grammar = lark_body(prompt)["sampling_params"]["ebnf"]
    visible = visible_matrix(prompt + ids, token_ids, **SERVER_DEFAULT)
    logits = reference.logits(prompt + ids, visible)
    matcher = LLMatcher(llguidance.hf.from_tokenizer(tokenizer), llguidance.grammar_from("lark", grammar))
    for step, token in enumerate(ids):
        allowed = allowed_ids(matcher, logits.shape[-1])
        row = logits[len(prompt) + step - 1].masked_fill(~allowed, float("-inf"))
        assert int(row.argmax()) == token, f"step {step}: server {token}, oracle {int(row.argmax())}"
        assert matcher.consume_token(token)
    assert lark["meta_info"]["memento"]["blocks_evicted"] == len(SHAPE)


def test_dsl_one_call_and_blocks_on_llguidance(llguidance_server, tokenizer):
    import sglang as sgl

    from memento_sglang.frontend.dsl import memento_block, memento_reasoning

    @sgl.function
    def one_call(s, question):
        s += question + memento_reasoning(
            "r", max_blocks=2, max_block_tokens=5, max_memento_tokens=2, answer_regex="[0-9]{2}",
            grammar="llguidance", temperature=0,
        )  # fmt: skip

    @sgl.function
    def by_blocks(s, question):
        s += question + "<think>"
        s += memento_block("b", max_block_tokens=4, max_memento_tokens=2, grammar="llguidance")

    backend = sgl.RuntimeEndpoint(llguidance_server.url)
    question = tokenizer.decode(chat_prompt(tokenizer, "Count"))
    state = one_call.run(question=question, backend=backend)
    assert len(state["r_answer"]) == 2 and state["r_answer"].isdigit()
    assert 1 <= len(state["r_blocks"]) <= 2 and len(state["r_mementos"]) == len(state["r_blocks"])
    state = by_blocks.run(question=question, backend=backend)
    assert state.get_meta_info("b")["completion_tokens"] <= 4 + 1  # + its closing delimiter
    assert state.get_meta_info("b_memento")["completion_tokens"] <= 2 + 1
    assert MementoTrace.from_text(state.text()[len(question) :] + "</think>").blocks[0].text == state["b"]


# ------------------------------------------------------------------------- outlines


@pytest.mark.parametrize("kind", ["structural_tag", "ebnf"])
def test_outlines_refuses_the_memento_structure_with_a_clear_error(kind, outlines_server, tokenizer):
    """outlines compiles neither structural tags nor EBNF, and its regex guides match text, which
    ordinary tokens can spell: a Memento request with the structure is a 400 naming the backends
    that emit each delimiter as its single id (not SGLang's bare "failed to compile" abort)."""
    body = memento_body(chat_prompt(tokenizer, "Add the primes"), SHAPE)
    if kind == "ebnf":
        body = lark_body(chat_prompt(tokenizer, "Add the primes"))
    r = outlines_server.post("/generate", body)
    assert r.status_code == 400, r.text
    assert kind in r.text and "xgrammar or llguidance" in r.text and "outlines" in r.text
    plain = {"input_ids": chat_prompt(tokenizer, "Hi"), "sampling_params": {"max_new_tokens": 4}}
    assert outlines_server.generate(plain)["meta_info"]["completion_tokens"] == 4  # still serving


def test_the_data_pipelines_json_stage_runs_on_outlines(outlines_server):
    """Boundary scoring (a JSON answer whose list has exactly the window's length) through
    `sgl.gen(regex=...)` on outlines: every window gets exactly its count."""
    from memento_sglang.data.llm import ServerTarget, StructuredLLM, connect
    from memento_sglang.data.score import score_boundaries

    sentences = [f"Step {i}: add {i} and {i + 1} to get {2 * i + 1}. " for i in range(20)]
    completer = connect(ServerTarget(url=outlines_server.url))
    try:
        scores = score_boundaries(StructuredLLM(completer), sentences, window=8)
    finally:
        completer.close()
    assert len(scores.scores) == len(sentences) - 1
    assert all(s in (0.0, 1.0, 2.0, 3.0) for s in scores.scores)
    assert [n for _, n in scores.windows] and sum(n for _, n in scores.windows) == len(sentences) - 1
