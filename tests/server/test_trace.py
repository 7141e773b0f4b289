"""MementoTrace on real server output: from ids and from text, with the server's stats."""

from __future__ import annotations

import re
from typing import Literal

import pytest
from pydantic import BaseModel

from memento_sglang.frontend.structural_tag import MEMENTO_TOKENS, BlockBudget, memento_structural_tag
from memento_sglang.frontend.trace import MementoTrace
from tests.support.client import chat_prompt, memento_body, opt_in

pytestmark = pytest.mark.server


def test_server_output_parses_the_same_from_ids_and_from_text(default_server, tokenizer):
    blocks = [(6, 2), (5, 3), (4, 2)]
    body = memento_body(chat_prompt(tokenizer, "Trace me"), blocks, memento=opt_in({}))
    out = default_server.generate(body)
    ids_of = {t: tokenizer.convert_tokens_to_ids(t) for t in MEMENTO_TOKENS}
    stats = out["meta_info"]["memento"]
    from_ids = MementoTrace.from_token_ids(out["output_ids"], ids_of, tokenizer.decode, stats=stats)
    assert len(from_ids.blocks) == len(blocks) == from_ids.stats.blocks_closed
    ids = out["output_ids"]
    opens = [i for i, t in enumerate(ids) if t == ids_of["<|summary_start|>"]]
    closes = [i for i, t in enumerate(ids) if t == ids_of["<|summary_end|>"]]
    spans = zip(opens, closes, strict=True)
    for (start, end), (_, budget), block in zip(spans, blocks, from_ids.blocks, strict=True):
        assert 0 < end - start - 1 <= budget and block.memento == tokenizer.decode(ids[start + 1 : end])
    from_text = MementoTrace.from_text(out["text"], stats=stats)
    assert from_text.mementos == from_ids.mementos
    assert from_ids.answer.startswith(from_text.answer)  # the ids keep the stop token, the text not


class Verdict(BaseModel):
    verdict: Literal["yes", "no"]


@pytest.mark.parametrize(
    "constraint", [{"answer_regex": "[0-9]{2,3}"}, {"answer_schema": Verdict}], ids=["regex", "schema"]
)
def test_the_answer_follows_its_constraint(default_server, tokenizer, constraint):
    tag = memento_structural_tag([BlockBudget(5, 2)], **constraint)
    params = {"temperature": 0.0, "max_new_tokens": 120, "structural_tag": tag, "skip_special_tokens": False}
    out = default_server.generate(
        {"input_ids": chat_prompt(tokenizer, "Answer briefly"), "sampling_params": params}
    )
    assert out["meta_info"]["finish_reason"]["type"] != "length", out["text"]
    answer = MementoTrace.from_text(out["text"]).answer.removesuffix("<|im_end|>")
    if "answer_regex" in constraint:
        assert re.fullmatch("[0-9]{2,3}", answer), answer
    else:
        assert Verdict.model_validate_json(answer).verdict in ("yes", "no")
