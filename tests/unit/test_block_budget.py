"""`max_block_tokens` on the logits: only `<|block_end|>` stays sampleable, in one gather."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from memento_sglang.sequence import MementoSequence
from memento_sglang.sglang_plugin.forward import BUDGET_ROWS, force_block_ends
from memento_sglang.sglang_plugin.request_state import STATE
from tests.support.synthetic import BE, spec, tokens


def request(output: str) -> SimpleNamespace:
    seq = MementoSequence(spec(mask_delimiters=False, max_block_tokens=2), tokens("A"))
    return SimpleNamespace(**{STATE: seq, "output_ids": tokens(output), "rid": "r"})


def test_full_blocks_can_only_end_and_other_rows_are_untouched():
    logits = torch.randn(3, 64)
    logits[2, BE] = float("-inf")  # a grammar had masked block_end: it becomes 0, not -inf
    before = logits.clone()
    rows = [(0, request("[ w w")), (1, request("[ w")), (2, request("[ w w"))]
    force_block_ends(SimpleNamespace(next_token_logits=logits), SimpleNamespace(**{BUDGET_ROWS: rows}))
    assert torch.equal(logits[1], before[1])
    assert logits[0, BE] == before[0, BE] and logits[2, BE] == 0.0
    for row in (0, 2):
        others = torch.cat([logits[row, :BE], logits[row, BE + 1 :]])
        assert torch.isneginf(others).all()
