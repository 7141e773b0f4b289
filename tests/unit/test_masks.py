"""Prefill masks equal the independent mask rule on the extend's rows and columns."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.masks import extend_visibility
from memento_sglang.sequence import MementoSequence
from tests.support.mask_rule import visible_matrix
from tests.support.synthetic import spec, tokens


@settings(max_examples=200, deadline=None)
@given(
    lens=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=5),
    keep=st.integers(-1, 2),
    delims=st.booleans(),
    data=st.data(),
)
def test_extend_mask_matches_rule(lens, keep, delims, data):
    text = "A" + "".join(" [" + " w" * b + " ] (" + " s" * s + " )" for b, s in lens) + " w w"
    ids = tokens(text)
    sp = spec(mask_delimiters=delims, keep_last_n_blocks=keep)
    seq = MementoSequence(sp, ids, evict_prompt_blocks=True)  # a prompt = one prefill
    prefix = data.draw(st.integers(0, len(ids) - 1))  # chunked: earlier chunks are the prefix
    mask = extend_visibility(seq.due_evictions(), prefix_len=prefix, extend_len=len(ids) - prefix)
    rule = visible_matrix(ids, sp.ids, keep_last_n_blocks=keep, mask_delimiters=delims)
    expected = torch.tensor(rule)[prefix:, :]
    if mask is None:  # plain causal suffices
        assert torch.equal(expected, torch.tril(torch.ones(len(ids), len(ids), dtype=torch.bool))[prefix:])
    else:
        assert torch.equal(mask, expected)


def test_offset_columns_are_physical():
    """After compaction the row lacks the evicted columns; rows/cols shift by the offset."""
    seq = MementoSequence(spec(mask_delimiters=False), tokens("A"))
    seq.on_output_tokens(tokens("[ w w ] ( s ) [ w ] ( s ) w"))
    first, second = seq.take_due(100)
    seq.apply_eviction(first)
    assert seq.map.evicted_tokens == 2
    # pretend the second block is still in the row during a 2-token extend at the end
    mask = extend_visibility([second], compacted=seq.map, prefix_len=13, extend_len=2)
    assert mask.shape == (2, 15)
    hidden_cols = [c for c in range(15) if not mask[1, c]]
    assert [c + 2 for c in hidden_cols if c < 13] == list(range(second.start, second.end))
