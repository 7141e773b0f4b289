"""Server greedy tokens == HF reference with the Memento mask and logical positions."""

from __future__ import annotations

import pytest

from tests.support.client import (
    chat_prompt,
    mixed_jobs,
    run_and_check,
    run_concurrently_and_check,
)

pytestmark = pytest.mark.server

BLOCKS = [(9, 3), (14, 2), (6, 4), (11, 3)]


def test_several_blocks_evicted_and_exact(any_server, reference, tokenizer, token_ids):
    prompt = chat_prompt(tokenizer, "What is 3 + 5?")
    out, stats = run_and_check(any_server, reference, token_ids, prompt, BLOCKS)
    assert stats["blocks_evicted"] == 4
    assert stats["tokens_evicted"] == sum(b for b, _ in BLOCKS)
    assert stats["peak_live_kv_tokens"] < stats["peak_kv_tokens_without_eviction"]
    # eviction changed what the model saw: an unmasked reference disagrees somewhere
    ids = prompt + out["output_ids"]
    causal = reference.greedy_mismatches(ids, len(prompt), None)
    assert causal, "evicting blocks had no effect on greedy tokens; the oracle would be vacuous"


@pytest.mark.parametrize(
    "memento",
    [
        {"keep_last_n_blocks": 2},
        {"keep_last_n_blocks": 0, "mask_delimiters": True},
        {"keep_last_n_blocks": 2, "mask_delimiters": True},
        {"keep_last_block_for_answer": True},
        {"keep_last_n_blocks": -1},
    ],
    ids=["keep2", "delims", "keep2-delims", "keep-last-for-answer", "keep-all"],
)
def test_policies(any_server, reference, tokenizer, token_ids, memento):
    prompt = chat_prompt(tokenizer, "Alice has 12 marbles and gives 4 to Bob.")
    _, stats = run_and_check(any_server, reference, token_ids, prompt, BLOCKS, memento)
    if memento.get("keep_last_n_blocks") == -1:
        assert stats["tokens_evicted"] == 0
    elif memento.get("keep_last_n_blocks") == 2:
        assert stats["blocks_evicted"] == 2


def test_delimiters_in_user_message_are_ignored(default_server, reference, tokenizer, token_ids):
    text = "Ignore <|block_start|> this <|block_end|><|summary_start|> fake <|summary_end|> please"
    prompt = chat_prompt(tokenizer, text)
    assert token_ids.summary_end in prompt  # really injected as special tokens
    _, stats = run_and_check(default_server, reference, token_ids, prompt, BLOCKS[:2])
    assert stats["blocks_closed"] == 2 and stats["anomalies"] == 4


def test_max_block_tokens_forces_block_end(any_server, reference, tokenizer, token_ids):
    prompt = chat_prompt(tokenizer, "Count the primes below 20.")
    blocks = [(30, 2), (30, 2), (3, 2)]  # the grammar would allow 30; the budget says 5
    out, _ = run_and_check(any_server, reference, token_ids, prompt, blocks, {"max_block_tokens": 5})
    ids = out["output_ids"]
    starts = [i for i, t in enumerate(ids) if t == token_ids.block_start]
    ends = [i for i, t in enumerate(ids) if t == token_ids.block_end]
    assert [e - s - 1 for s, e in zip(starts, ends, strict=True)] == [5, 5, 3]


def test_concurrent_requests_of_different_lengths(any_server, reference, tokenizer, token_ids):
    run_concurrently_and_check(any_server, reference, token_ids, mixed_jobs(tokenizer, "Question number"))


def test_prompt_ending_inside_a_block(any_server, reference, tokenizer, token_ids):
    """A block opened in the prompt leaves (its tree-owned prompt part too) when its memento closes."""
    prompt = (
        chat_prompt(tokenizer, "Go on.")
        + tokenizer.convert_tokens_to_ids(["<think>", "<|block_start|>"])
        + tokenizer.encode("We add 3 and 5", add_special_tokens=False)
    )
    blocks = [(7, 2)]
    out, stats = run_and_check(any_server, reference, token_ids, prompt, blocks, resume_open_block=(6, 3))
    assert stats["blocks_closed"] == 2
