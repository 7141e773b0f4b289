"""The llguidance Lark form of the Memento structure, checked with llguidance's matcher."""

from __future__ import annotations

import llguidance
import llguidance.hf
import numpy as np
import pytest
from llguidance import LLMatcher

from memento_sglang.frontend.lark_grammar import memento_lark_grammar
from memento_sglang.frontend.structural_tag import MEMENTO_TOKENS, BlockBudget


@pytest.fixture(scope="module")
def ll_tokenizer(tokenizer):
    return llguidance.hf.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def ids(tokenizer):
    return dict(zip(MEMENTO_TOKENS, tokenizer.convert_tokens_to_ids(list(MEMENTO_TOKENS)), strict=True))


def matcher(ll_tokenizer, grammar: str) -> LLMatcher:
    m = LLMatcher(ll_tokenizer, llguidance.grammar_from("lark", grammar))
    assert not m.is_error(), m.get_error()
    return m


def allowed(m: LLMatcher, vocab: int) -> set[int]:
    bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint32)
    return {i for i in range(vocab) if (bits[i // 32] >> (i % 32)) & 1}


def feed(m: LLMatcher, tokens: list[int]) -> None:
    for t in tokens:
        assert m.consume_token(t), (t, m.get_error())


def test_delimiters_are_single_ids_and_budgets_bind(ll_tokenizer, tokenizer, ids):
    m = matcher(ll_tokenizer, memento_lark_grammar([BlockBudget(3, 1)], answer_tokens=2))
    vocab, special = len(tokenizer), set(tokenizer.all_special_ids)
    assert allowed(m, vocab) == {ids["<think>"]}
    feed(m, [ids["<think>"]])
    assert allowed(m, vocab) == {ids["<|block_start|>"]}
    feed(m, [ids["<|block_start|>"], 200])
    inside = allowed(m, vocab)
    assert inside & special == {ids["<|block_end|>"]} and 201 in inside  # text or the closer
    feed(m, [201, 202])
    assert allowed(m, vocab) == {ids["<|block_end|>"]}  # the budget is spent
    feed(m, [ids["<|block_end|>"]])
    assert allowed(m, vocab) == {ids["<|summary_start|>"]}
    feed(m, [ids["<|summary_start|>"], 203])
    assert allowed(m, vocab) == {ids["<|summary_end|>"]}
    feed(m, [ids["<|summary_end|>"]])
    assert allowed(m, vocab) == {ids["</think>"]}


def test_max_blocks_and_answer_regex(ll_tokenizer, tokenizer, ids):
    grammar = memento_lark_grammar(BlockBudget(1, 1), max_blocks=2, answer_regex="[0-9]{2}")
    m = matcher(ll_tokenizer, grammar)
    vocab = len(tokenizer)
    block = [ids["<|block_start|>"], 200, ids["<|block_end|>"], ids["<|summary_start|>"], 201]
    feed(m, [ids["<think>"], *block, ids["<|summary_end|>"]])
    assert allowed(m, vocab) == {ids["<|block_start|>"], ids["</think>"]}
    feed(m, [*block, ids["<|summary_end|>"]])
    assert allowed(m, vocab) == {ids["</think>"]}
    feed(m, [ids["</think>"]])
    digits = allowed(m, vocab)
    assert digits and all(tokenizer.decode([t]).isdigit() for t in digits)


def test_schema_answer_compiles_and_contradictions_are_refused(ll_tokenizer):
    from pydantic import BaseModel

    class Answer(BaseModel):
        value: int

    matcher(ll_tokenizer, memento_lark_grammar([BlockBudget(2, 1)], answer_schema=Answer))
    with pytest.raises(ValueError, match="not both"):
        memento_lark_grammar([BlockBudget(1, 1)], answer_regex="x", answer_schema=Answer)
    with pytest.raises(ValueError, match="single BlockBudget"):
        memento_lark_grammar([BlockBudget(1, 1)], max_blocks=2)


@pytest.mark.parametrize("regex", ["a/b", r"a\/b", r"a\\/b"])
def test_answer_regex_slashes_escaped_or_not(ll_tokenizer, regex):
    matcher(ll_tokenizer, memento_lark_grammar([BlockBudget(1, 1)], answer_regex=regex))
