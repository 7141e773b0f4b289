"""MementoTrace: parse from text and from ids, round trips, errors that name the problem."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memento_sglang.frontend.trace import MalformedTrace, MementoBlock, MementoTrace, closed_mementos

IDS = {
    "<think>": 1, "</think>": 2, "<|block_start|>": 3, "<|block_end|>": 4,
    "<|summary_start|>": 5, "<|summary_end|>": 6,
}  # fmt: skip
WORD = st.text(alphabet="abc xyz.", max_size=12)


def decode(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i - 10) for i in ids)


def test_parse_text_into_blocks_mementos_and_answer():
    text = "<think><|block_start|>x = 5<|block_end|><|summary_start|>x is 5<|summary_end|>\n</think>It is 5."
    stats = {
        "blocks_closed": 1, "blocks_evicted": 1, "tokens_evicted": 3, "live_kv_tokens": 9,
        "peak_live_kv_tokens": 12, "peak_kv_tokens_without_eviction": 12, "anomalies": 0,
    }  # fmt: skip
    trace = MementoTrace.from_text(text, stats=stats)
    assert trace.blocks == (MementoBlock(text="x = 5", memento="x is 5"),)
    assert trace.mementos == ["x is 5"] and trace.answer == "It is 5."
    assert trace.stats.tokens_evicted == 3


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(WORD, WORD), max_size=4), WORD, st.booleans())
def test_text_round_trip(blocks, answer, think):
    trace = MementoTrace(blocks=tuple(MementoBlock(text=b, memento=m) for b, m in blocks), answer=answer)
    assert MementoTrace.from_text(trace.to_text(think=think)) == trace


def test_parse_ids_where_each_delimiter_is_one_id():
    ids = [1, 3, 10, 11, 4, 5, 12, 6, 2, 13, 14]
    trace = MementoTrace.from_token_ids(ids, IDS, decode)
    assert trace.blocks == (MementoBlock(text="ab", memento="c"),) and trace.answer == "de"


def test_a_delimiter_spelled_with_ordinary_tokens_is_rejected():
    spelled = {10: "<|block_", 11: "end|>"}
    with pytest.raises(MalformedTrace, match="spelled with ordinary tokens"):
        MementoTrace.from_token_ids([1, 3, 10, 11, 2], IDS, lambda ids: "".join(spelled[i] for i in ids))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<think><|block_start|>a<|summary_start|>", "<|summary_start|> where <|block_end|> was expected"),
        ("<think><|block_start|>a<|block_end|>b<|summary_start|>", "text 'b' outside a block"),
        ("<think><|block_start|>a<|block_end|><|summary_start|>m<|summary_end|>", "no </think>"),
        ("<think><|block_start|><|block_start|>", "<|block_start|> where <|block_end|> was expected"),
        ("<think></think>a</think>", "nothing after the answer"),
        ("<|summary_end|>", "<|summary_end|> where <think> or <|block_start|> or </think> was expected"),
    ],
)
def test_malformed_traces_name_what_is_wrong(text, problem):
    with pytest.raises(MalformedTrace, match=problem.replace("|", r"\|")):
        MementoTrace.from_text(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(WORD, WORD), min_size=1, max_size=4), st.integers(min_value=0, max_value=200))
def test_closed_mementos_of_a_cut_stream(blocks, cut):
    """Every prefix of a trace reports exactly the mementos whose delimiter it holds."""
    trace = MementoTrace(blocks=tuple(MementoBlock(text=b, memento=m) for b, m in blocks), answer="")
    text = trace.to_text()
    prefix = text[: cut % (len(text) + 1)]
    assert closed_mementos(prefix) == trace.mementos[: prefix.count("<|summary_end|>")]
