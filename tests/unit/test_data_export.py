"""Stage-2 SFT export: the runtime's mask equals the independent rule; collator; persistence."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memento_sglang.config import MementoConfig
from memento_sglang.data.assemble import MementoExample, assemble
from memento_sglang.data.export import (
    IGNORE_INDEX,
    MementoCollator,
    TrainingFeatures,
    example_features,
    features_from_row,
    resolve_spec,
    to_dataset,
    training_features,
    write_jsonl,
)
from memento_sglang.masks import extend_visibility
from memento_sglang.sequence import MementoSequence
from tests.support.mask_rule import visible_matrix

BLOCKS = [
    "Let x be the number of apples.",
    "Then 3x + 5 = 20, so x = 5.",
    "We check: 3 * 5 + 5 = 20.",
    "Done.",
]
MEMENTOS = ["x: apples", "3x+5=20; x=5", "check ok", "done"]
TEXT = st.text(alphabet="abcxyz 0123456789+=.,", min_size=1, max_size=25).filter(str.strip)


def build(tokenizer, n: int, *, problem: str = "How many apples?", answer: str = "5") -> MementoExample:
    return assemble(
        task_id=f"n{n}", problem=problem, think_prefix="", blocks=BLOCKS[:n], mementos=MEMENTOS[:n],
        answer=answer, tokenizer=tokenizer,
    )  # fmt: skip


def rule_mask(ids: list[int], tokenizer, config: MementoConfig) -> torch.Tensor:
    spec = resolve_spec(config, tokenizer)
    return torch.tensor(
        visible_matrix(
            ids,
            spec.ids,
            keep_last_n_blocks=config.keep_last_n_blocks,
            mask_delimiters=bool(config.mask_delimiters),
            keep_last_block_for_answer=config.keep_last_block_for_answer,
        )
    )


CONFIGS = [
    MementoConfig(enable=True, mask_delimiters=False),
    MementoConfig(enable=True, mask_delimiters=True),
    MementoConfig(enable=True, mask_delimiters=False, keep_last_n_blocks=1),
    MementoConfig(enable=True, mask_delimiters=True, keep_last_n_blocks=-1),
    MementoConfig(enable=True, mask_delimiters=False, keep_last_block_for_answer=True),
]


@pytest.mark.parametrize("n", [0, 1, 2, 4])
@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"delims{c.mask_delimiters}-keep{c.keep_last_n_blocks}"
)
def test_mask_equals_independent_rule(tokenizer, n, config):
    ex = build(tokenizer, n)
    f = example_features(ex, config, tokenizer=tokenizer)
    assert torch.equal(f.dense_mask(), rule_mask(f.input_ids, tokenizer, config))


@pytest.mark.parametrize("n", [1, 3])
def test_mask_is_the_servers_prefill_mask(tokenizer, n):
    """Same matrix as `extend_visibility` of the server's masked prefill of the whole sequence."""
    ex = build(tokenizer, n)
    f = example_features(ex, tokenizer=tokenizer)
    seq = MementoSequence(resolve_spec(None, tokenizer), f.input_ids, evict_prompt_blocks=True)
    server = extend_visibility(seq.due_evictions(), prefix_len=0, extend_len=len(f))
    assert server is not None and torch.equal(f.dense_mask(), server)
    assert len(f.hidden_spans) == n  # one span per block, hidden right after its memento


def test_default_config_hides_block_contents_after_summary_end(tokenizer, token_ids):
    f = example_features(build(tokenizer, 2), tokenizer=tokenizer)
    ids = f.input_ids
    for (q, lo, hi), bs, be, se in zip(
        f.hidden_spans,
        [i for i, t in enumerate(ids) if t == token_ids.block_start],
        [i for i, t in enumerate(ids) if t == token_ids.block_end],
        [i for i, t in enumerate(ids) if t == token_ids.summary_end],
        strict=True,
    ):
        assert (q, lo, hi) == (se + 1, bs + 1, be)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(TEXT, TEXT), max_size=5), delims=st.booleans(), keep=st.integers(-1, 2))
def test_random_examples_mask_equals_rule(tokenizer, pairs, delims, keep):
    blocks, mementos = [b for b, _ in pairs], [m for _, m in pairs]
    ex = assemble(
        task_id="h", problem="p", think_prefix="", blocks=blocks, mementos=mementos, answer="a",
        tokenizer=tokenizer,
    )  # fmt: skip
    config = MementoConfig(enable=True, mask_delimiters=delims, keep_last_n_blocks=keep)
    f = example_features(ex, config, tokenizer=tokenizer)
    assert torch.equal(f.dense_mask(), rule_mask(f.input_ids, tokenizer, config))


def test_multi_turn_prompt_blocks_are_hidden_too(tokenizer):
    """A prompt holding an earlier turn's blocks: the server's masked prefill hides them."""
    first, second = build(tokenizer, 2), build(tokenizer, 1, problem="And pears?")
    turn = tokenizer(
        "<|im_start|>user\nAnd pears?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )
    prompt = first.prompt_ids + first.completion_ids + turn["input_ids"]
    f = training_features(prompt, second.completion_ids, tokenizer=tokenizer)
    assert len(f.hidden_spans) == 3
    assert torch.equal(f.dense_mask(), rule_mask(f.input_ids, tokenizer, CONFIGS[0]))


def test_labels_and_positions(tokenizer):
    ex = build(tokenizer, 2)
    f = example_features(ex, tokenizer=tokenizer)
    p = len(ex.prompt_ids)
    assert f.input_ids == ex.prompt_ids + ex.completion_ids
    assert f.labels == [IGNORE_INDEX] * p + ex.completion_ids
    assert f.position_ids == list(range(len(f)))


def test_stage_one_config_is_plain_causal(tokenizer):
    f = example_features(build(tokenizer, 3), MementoConfig(mask_delimiters=False), tokenizer=tokenizer)
    assert f.hidden_spans == []
    assert torch.equal(f.dense_mask(), torch.ones(len(f), len(f), dtype=torch.bool).tril())


def test_malformed_structure_is_refused(tokenizer, token_ids):
    ex = build(tokenizer, 1)
    stray = ex.completion_ids[:1] + [token_ids.block_end] + ex.completion_ids[1:]
    with pytest.raises(ValueError, match="block_end without an open block"):
        training_features(ex.prompt_ids, stray, tokenizer=tokenizer)
    assert training_features(ex.prompt_ids, stray, tokenizer=tokenizer, strict=False).hidden_spans
    cut = ex.completion_ids[: ex.completion_ids.index(token_ids.block_end)]
    with pytest.raises(ValueError, match="ends inside a block"):
        training_features(ex.prompt_ids, cut, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        training_features(ex.prompt_ids, ex.completion_ids)


def test_features_validate_their_shape():
    with pytest.raises(ValueError, match="differ in length"):
        TrainingFeatures(input_ids=[1, 2], labels=[1], position_ids=[0, 1])
    with pytest.raises(ValueError, match="not a key range before its queries"):
        TrainingFeatures(
            input_ids=[1, 2, 3], labels=[1, 2, 3], position_ids=[0, 1, 2], hidden_spans=[(1, 0, 2)]
        )


# -------------------------------------------------------------------------- collator


@pytest.fixture(scope="module")
def pair(tokenizer) -> list[TrainingFeatures]:
    """Two features of different lengths, both with hidden spans."""
    return [example_features(build(tokenizer, n), tokenizer=tokenizer) for n in (3, 1)]


def test_collator_pads_and_masks(tokenizer, pair):
    batch = MementoCollator(tokenizer=tokenizer)([pair[0], pair[1].to_row()])  # a dataset row works too
    width = len(pair[0])
    short = len(pair[1])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (2, width)
    assert batch["attention_mask"].shape == (2, 1, width, width)
    assert batch["attention_mask"].dtype == torch.float32
    assert batch["input_ids"][1, short:].eq(tokenizer.pad_token_id).all()
    assert batch["labels"][1, short:].eq(IGNORE_INDEX).all()
    assert batch["position_ids"][1].tolist() == list(range(short)) + [0] * (width - short)
    minimum = torch.finfo(torch.float32).min
    for i, f in enumerate(pair):
        n = len(f)
        expected = torch.where(f.dense_mask(), 0.0, minimum)
        assert torch.equal(batch["attention_mask"][i, 0, :n, :n], expected)
        assert batch["attention_mask"][i, 0, :, n:].eq(minimum).all()  # no query sees padding
        assert batch["attention_mask"][i, 0, n:, :n].eq(0).all()  # padding queries: no empty row


def test_collator_bool_mask_and_multiple(tokenizer, pair):
    batch = MementoCollator(pad_token_id=7, mask_dtype=torch.bool, pad_to_multiple_of=16)(pair)
    width = batch["input_ids"].shape[1]
    assert width % 16 == 0 and width >= len(pair[0])
    assert batch["attention_mask"].dtype == torch.bool
    assert torch.equal(batch["attention_mask"][1, 0, : len(pair[1]), : len(pair[1])], pair[1].dense_mask())
    assert batch["input_ids"][0, len(pair[0]) :].eq(7).all()


@pytest.fixture(scope="module")
def hf_model(model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padded_batch_forward_equals_each_example_alone(hf_model, tokenizer, pair, attn):
    hf_model.set_attn_implementation(attn)
    batch = MementoCollator(tokenizer=tokenizer)(pair)
    with torch.no_grad():
        batched = hf_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for i, f in enumerate(pair):
            alone = MementoCollator(tokenizer=tokenizer)([f])
            logits = hf_model(
                input_ids=alone["input_ids"],
                position_ids=alone["position_ids"],
                attention_mask=alone["attention_mask"],
            ).logits[0]
            torch.testing.assert_close(batched[i, : len(f)], logits, atol=1e-4, rtol=0)
            causal = hf_model(input_ids=alone["input_ids"]).logits[0]
            after = f.hidden_spans[0][0]  # the first query that no longer sees a block
            assert torch.allclose(causal[:after], logits[:after], atol=1e-4)
            assert not torch.allclose(causal[after:], logits[after:], atol=1e-2)  # the mask matters


def test_collated_batch_gives_a_loss(hf_model, tokenizer, pair):
    hf_model.set_attn_implementation("sdpa")
    out = hf_model(**MementoCollator(tokenizer=tokenizer)(pair))
    assert torch.isfinite(out.loss)


# ----------------------------------------------------------------------- persistence


def test_dataset_round_trip(tmp_path, pair):
    ds = to_dataset(pair)
    assert ds.column_names == ["input_ids", "labels", "hidden_spans"]
    ds.save_to_disk(str(tmp_path / "ds"))
    from datasets import load_from_disk

    loaded = load_from_disk(str(tmp_path / "ds"))
    assert [features_from_row(row) for row in loaded] == pair
    assert MementoCollator(pad_token_id=0)(list(loaded))["attention_mask"].shape[0] == 2


def test_jsonl_round_trip(tmp_path, tokenizer, pair):
    examples = [build(tokenizer, n) for n in (0, 2)]
    assert write_jsonl(examples, tmp_path / "ex.jsonl") == 2
    lines = (tmp_path / "ex.jsonl").read_text().splitlines()
    assert [MementoExample.model_validate_json(line) for line in lines] == examples
    assert write_jsonl(pair, tmp_path / "f.jsonl") == 2
    rows = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [features_from_row(r) for r in rows] == pair
    with pytest.raises(TypeError):
        write_jsonl([{"input_ids": [1]}], tmp_path / "bad.jsonl")  # type: ignore[list-item]
