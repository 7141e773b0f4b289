"""Assembly of Memento SFT examples: round trips through the strict parser, refusals, filter."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memento_sglang.constants import END_OF_TURN, MEMENTO_TOKENS
from memento_sglang.data.assemble import MementoExample, QualityFilter, assemble
from memento_sglang.frontend.trace import MementoBlock, MementoTrace

BLOCKS = ["Let x be the number of apples.", "Then 3x + 5 = 20, so x = 5.", "We check: 3 * 5 + 5 = 20."]
MEMENTOS = ["x: apples", "3x+5=20; x=5", "check ok"]
ANSWER = "The answer is 5."
# printable text, a little unicode, never whitespace only
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")), max_size=30
).filter(str.strip)


def build(tokenizer, n: int = 3, **kw) -> MementoExample:
    args = dict(
        task_id="t0",
        problem="Alice has 12 marbles. How many?",
        think_prefix="",
        blocks=BLOCKS[:n],
        mementos=MEMENTOS[:n],
        answer=ANSWER,
        tokenizer=tokenizer,
    )
    return assemble(**(args | kw))


def delimiter_ids(tokenizer) -> dict[str, int]:
    return {d: tokenizer.convert_tokens_to_ids(d) for d in MEMENTO_TOKENS}


def parse_completion(tokenizer, ex: MementoExample) -> MementoTrace:
    """The completion up to the end of turn, parsed by the front end's strict id parser."""
    ids = ex.completion_ids[: ex.completion_ids.index(tokenizer.convert_tokens_to_ids(END_OF_TURN))]
    decode = lambda run: tokenizer.decode(run, skip_special_tokens=False)  # noqa: E731
    return MementoTrace.from_token_ids(ids, delimiter_ids(tokenizer), decode)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_round_trip_through_ids_and_text(tokenizer, n):
    ex = build(tokenizer, n, judge_scores=[9.0] * n)
    expected = MementoTrace(
        blocks=tuple(MementoBlock(text=b, memento=m) for b, m in zip(BLOCKS[:n], MEMENTOS[:n], strict=True)),
        answer=ANSWER,
    )
    assert parse_completion(tokenizer, ex) == expected
    assert MementoTrace.from_text(ex.text) == expected
    assert ex.text == expected.to_text()
    assert ex.num_blocks == n and ex.judge_scores == [9.0] * n


def test_conversation_is_the_chat_template(tokenizer):
    ex = build(tokenizer)
    messages = [{"role": "user", "content": ex.problem}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": ex.text}], tokenize=False
    )
    assert tokenizer.decode(ex.prompt_ids) == prompt
    assert tokenizer.decode(ex.prompt_ids + ex.completion_ids) == full
    assert tokenizer.decode(ex.completion_ids).endswith(END_OF_TURN + "\n")


def test_each_delimiter_is_one_id(tokenizer):
    ex = build(tokenizer)
    ids = delimiter_ids(tokenizer)
    counts = {d: ex.completion_ids.count(i) for d, i in ids.items()}
    assert counts == {"<think>": 1, "</think>": 1} | {d: 3 for d in MEMENTO_TOKENS[2:]}


def test_token_statistics(tokenizer):
    ex = build(tokenizer)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    assert ex.block_tokens == [len(encode(b)) for b in BLOCKS]
    assert ex.memento_tokens == [len(encode(m)) for m in MEMENTOS]
    assert ex.compression_ratio == pytest.approx(sum(ex.memento_tokens) / sum(ex.block_tokens))
    assert build(tokenizer, 0).compression_ratio == 0.0


def test_think_prefix_is_kept(tokenizer):
    ex = build(tokenizer, think_prefix="Okay, let me think. ")
    assert ex.text.startswith("<think>Okay, let me think. <|block_start|>")
    assert tokenizer.decode(ex.completion_ids).startswith("<think>Okay, let me think. <|block_start|>")
    assert ex.block_tokens == build(tokenizer).block_tokens


def test_no_problem_renders_an_empty_user_turn(tokenizer):
    ex = build(tokenizer, problem=None)
    assert ex.problem is None
    assert tokenizer.decode(ex.prompt_ids) == "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pairs=st.lists(st.tuples(TEXT, TEXT), max_size=4),
    answer=st.text(max_size=20),
    prefix=st.sampled_from(["", "\n"]),
)
def test_random_texts_round_trip(tokenizer, pairs, answer, prefix):
    blocks, mementos = [b for b, _ in pairs], [m for _, m in pairs]
    ex = assemble(
        task_id="h", problem="p", think_prefix=prefix, blocks=blocks, mementos=mementos, answer=answer,
        tokenizer=tokenizer,
    )  # fmt: skip
    trace = parse_completion(tokenizer, ex)
    assert [b.text for b in trace.blocks] == blocks and trace.mementos == mementos
    assert trace.answer == answer
    assert MementoTrace.from_text(ex.text).answer == answer


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mementos": MEMENTOS[:2]}, "3 blocks but 2 mementos"),
        ({"blocks": [BLOCKS[0], "  \n", BLOCKS[2]]}, "block 1 is empty"),
        ({"blocks": ["", *BLOCKS[1:]]}, "block 0 is empty"),
        ({"mementos": [MEMENTOS[0], "", MEMENTOS[2]]}, "memento 1 is empty"),
        ({"blocks": [BLOCKS[0], "a <|block_end|> b", BLOCKS[2]]}, r"block 1 contains the delimiter"),
        ({"mementos": [MEMENTOS[0], MEMENTOS[1], "x</think>"]}, r"memento 2 contains the delimiter"),
        ({"blocks": ["<|summary_start|>", *BLOCKS[1:]]}, r"block 0 contains the delimiter"),
        ({"answer": "5 <|im_end|>"}, "answer contains the delimiter"),
        ({"think_prefix": "<think>"}, "think_prefix contains the delimiter"),
        ({"problem": "Why <|block_start|> x?"}, "problem contains the delimiter"),
        ({"problem": "Hi <|im_start|>"}, "problem contains the delimiter"),
        ({"judge_scores": [9.0]}, "1 judge scores for 3 blocks"),
        ({"blocks": "one string"}, "not one string"),
    ],
)
def test_refusals(tokenizer, change, message):
    with pytest.raises(ValueError, match=message):
        build(tokenizer, **change)


def test_refuses_a_tokenizer_that_splits_the_delimiters():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(BLOCKS * 4, trainer=trainer)
    plain = PreTrainedTokenizerFast(tokenizer_object=core)
    with pytest.raises(ValueError, match="no chat template"):
        build(plain)
    plain.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="is not a single token of this tokenizer"):
        build(plain)


def test_quality_filter(tokenizer):
    ex = build(tokenizer, judge_scores=[9.0, 8.0, 8.5])
    loose = QualityFilter(max_compression_ratio=None)
    assert loose.reasons(ex) == [] and loose.keeps(ex)
    assert QualityFilter(max_compression_ratio=0.01).reasons(ex) == [
        f"compression ratio {ex.compression_ratio:.3f} > 0.01"
    ]
    low = ex.model_copy(update={"judge_scores": [9.0, 7.5, 8.0]})
    assert loose.reasons(low) == ["memento 1 judge score 7.5 < 8.0"]
    assert QualityFilter(min_judge_score=7.0, max_compression_ratio=None).keeps(low)
    unjudged = ex.model_copy(update={"judge_scores": None})
    assert "no judge scores" in loose.reasons(unjudged)[0]
    assert QualityFilter(min_judge_score=None, max_compression_ratio=None).keeps(unjudged)
    assert QualityFilter(max_compression_ratio=None, max_blocks=2).reasons(ex) == ["3 blocks > max_blocks 2"]
    empty = build(tokenizer, 0, judge_scores=[])
    assert QualityFilter(max_compression_ratio=None).reasons(empty) == ["0 blocks < min_blocks 1"]
    assert QualityFilter(max_compression_ratio=None, min_blocks=0).keeps(empty)


def test_example_is_frozen_and_serialisable(tokenizer):
    ex = build(tokenizer)
    with pytest.raises(ValueError):
        ex.text = "x"  # type: ignore[misc]
    assert MementoExample.model_validate_json(ex.model_dump_json()) == ex
