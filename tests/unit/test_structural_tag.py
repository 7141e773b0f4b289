"""Structural tags: token-exact Memento structure, and the xgrammar cache workaround."""

from __future__ import annotations

import json

import pytest
import xgrammar as xgr

from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag
from memento_sglang.sglang_plugin.grammar import TokenTagSafeCompiler

OTHER_TAGS = [[(9, 3), (14, 2), (6, 4), (11, 3)], [(30, 2), (30, 2), (3, 2)], [(10, 2), (8, 3)], [(4, 2)]]


def allowed_after(compiler, tag, accepted):
    matcher = xgr.GrammarMatcher(compiler.compile_structural_tag(tag))
    assert all(matcher.accept_token(t) for t in accepted)
    mask = xgr.allocate_token_bitmask(1, 384)
    matcher.fill_next_token_bitmask(mask)
    return [i for i in range(384) if (mask[0, i // 32] >> (i % 32)) & 1]


@pytest.fixture(scope="module")
def tokenizer_info(tokenizer):
    return xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))


@pytest.mark.parametrize("safe", [False, True])
def test_compiler_cache_mixup_and_workaround(tokenizer_info, token_ids, safe):
    cached = xgr.GrammarCompiler(tokenizer_info)
    compiler = (
        TokenTagSafeCompiler(cached, xgr.GrammarCompiler(tokenizer_info, cache_enabled=False))
        if safe
        else cached
    )
    for blocks in OTHER_TAGS:
        compiler.compile_structural_tag(
            memento_structural_tag([BlockBudget(*b) for b in blocks], answer_tokens=4)
        )
    tag = memento_structural_tag([BlockBudget(7, 2)], answer_tokens=4, resume_open_block=BlockBudget(0, 3))
    ordinary = [200, 201, 202]
    allowed = allowed_after(compiler, tag, [token_ids.block_end, token_ids.summary_start, *ordinary])
    if safe:
        assert allowed == [token_ids.summary_end]
    else:  # documents the upstream bug; if xgrammar fixes it, drop the workaround
        assert allowed != [token_ids.summary_end]


def test_every_delimiter_is_a_token_element(tokenizer_info, tokenizer, token_ids):
    tag = memento_structural_tag([BlockBudget(2, 1)], answer_tokens=1)
    compiler = xgr.GrammarCompiler(tokenizer_info, cache_enabled=False)
    ids = token_ids
    # `<think>` first, then only `<|block_start|>` is allowed: delimiters are single ids
    think = tokenizer.convert_tokens_to_ids("<think>")
    assert allowed_after(compiler, tag, [think]) == [ids.block_start]
    assert allowed_after(compiler, tag, [think, ids.block_start, 200, 201]) == [ids.block_end]


def test_exact_budgets_fix_the_lengths(tokenizer_info, tokenizer, token_ids):
    """`exact=True`: a block cannot end early, nor run long (benchmarks compare equal work)."""
    tag = memento_structural_tag([BlockBudget(2, 1, exact=True)], answer_tokens=1)
    compiler = xgr.GrammarCompiler(tokenizer_info, cache_enabled=False)
    think = tokenizer.convert_tokens_to_ids("<think>")
    after_one = allowed_after(compiler, tag, [think, token_ids.block_start, 200])
    assert token_ids.block_end not in after_one and 201 in after_one
    assert allowed_after(compiler, tag, [think, token_ids.block_start, 200, 201]) == [token_ids.block_end]
    opened = [think, token_ids.block_start, 200, 201, token_ids.block_end, token_ids.summary_start]
    assert token_ids.summary_end not in allowed_after(compiler, tag, opened)


def test_xgrammar_repeat_loses_exclusions(tokenizer_info, token_ids):
    """Why exact budgets are spelled out: upstream `repeat` forgets `exclude_tokens`."""
    compiler = xgr.GrammarCompiler(tokenizer_info, cache_enabled=False)
    one = {"type": "exclude_token", "exclude_tokens": ["<|block_end|>"]}
    repeat = {"type": "repeat", "min": 2, "max": 2, "content": one}
    fmt = {"type": "sequence", "elements": [repeat, {"type": "token", "token": "<|block_end|>"}]}
    tag = json.dumps({"type": "structural_tag", "format": fmt})
    assert token_ids.block_end in allowed_after(compiler, tag, [200])  # the upstream bug


def test_answer_constraints_compile_and_refuse_both(tokenizer_info):
    from pydantic import BaseModel

    class Answer(BaseModel):
        value: int

    compiler = xgr.GrammarCompiler(tokenizer_info, cache_enabled=False)
    for constraint in ({"answer_regex": "[0-9]{2,3}"}, {"answer_schema": Answer}):
        tag = memento_structural_tag([BlockBudget(4, 2)], **constraint)
        assert json.loads(tag)["format"]["elements"][-1]["type"] in ("regex", "json_schema")
        compiler.compile_structural_tag(tag)
    with pytest.raises(ValueError, match="not both"):
        memento_structural_tag([BlockBudget(4, 2)], answer_regex="x", answer_schema=Answer)


def test_max_blocks_bounds_the_block_count(tokenizer_info, tokenizer, token_ids):
    tag = memento_structural_tag(BlockBudget(1, 1), max_blocks=2, answer_tokens=1)
    compiler = xgr.GrammarCompiler(tokenizer_info, cache_enabled=False)
    ids = token_ids
    block = [ids.block_start, 200, ids.block_end, ids.summary_start, 201, ids.summary_end]
    think, end_think = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    assert sorted(allowed_after(compiler, tag, [think, *block])) == sorted([ids.block_start, end_think])
    assert allowed_after(compiler, tag, [think, *block, *block]) == [end_think]
    with pytest.raises(ValueError, match="at least 1"):
        memento_structural_tag(BlockBudget(1, 1), max_blocks=0)
    with pytest.raises(ValueError, match="single BlockBudget"):
        memento_structural_tag([BlockBudget(1, 1)], max_blocks=2)
