"""The real demo model on a Memento server: SmolLM2-135M-Instruct against the HF oracle."""

from __future__ import annotations

import pytest

from memento_sglang.config import MementoConfig
from memento_sglang.models.smollm2 import SMOLLM2_MEMENTO_CONFIG, smollm2_model_path
from memento_sglang.models.tiny import SPECIAL_TOKENS
from tests.support.client import (
    SERVER_DEFAULT,
    assert_matches_reference,
    chat_prompt,
    expected_stats,
    memento_body,
)
from tests.support.oracle import MementoReference

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def smollm2(smollm2_server):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_model_path())
    config = MementoConfig(enable=True, mask_delimiters=False, **SMOLLM2_MEMENTO_CONFIG)
    token_ids = config.resolve(tokenizer.get_vocab(), len(tokenizer)).ids
    reference = MementoReference(
        smollm2_model_path(), set(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
    )
    return smollm2_server, tokenizer, token_ids, reference


def test_real_model_trace_matches_the_oracle(smollm2):
    server, tokenizer, token_ids, reference = smollm2
    prompt = chat_prompt(tokenizer, "Alice has 12 marbles and gives 4 to Bob. How many are left?")
    shape = [(16, 6), (12, 6), (10, 4)]
    out = server.generate(memento_body(prompt, shape, answer_tokens=8))
    ids = out["output_ids"]
    assert ids.count(token_ids.summary_end) == len(shape)
    assert_matches_reference(reference, token_ids, prompt, ids, SERVER_DEFAULT)
    stats = out["meta_info"]["memento"]
    expected = expected_stats(token_ids, prompt, ids, SERVER_DEFAULT)
    assert {k: stats[k] for k in expected} == expected
    assert stats["anomalies"] == 0
