"""The `openai` client, unchanged, against the Memento server's chat API."""

from __future__ import annotations

import json

import pytest
import requests

from memento_sglang.frontend.structural_tag import BlockBudget, memento_structural_tag
from memento_sglang.frontend.trace import MementoTrace

pytestmark = pytest.mark.server

QUESTION = "Alice has 12 marbles and gives 4 to Bob. How many are left?"
SHAPE = [BlockBudget(6, 3), BlockBudget(5, 2)]


@pytest.fixture(scope="module")
def client(default_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{default_server.url}/v1", api_key="unused")


def ask(client, messages, *, stream: bool = False, **extra):
    return client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=messages,
        temperature=0,
        max_tokens=64,
        response_format=json.loads(memento_structural_tag(SHAPE, answer_tokens=4)),
        stream=stream,
        extra_body={"return_meta_info": not stream, **extra},  # SGLang streams no meta_info
    )


@pytest.fixture(scope="module")
def first_turn(client):
    return ask(client, [{"role": "user", "content": QUESTION}], return_token_ids=True).choices[0]


def test_reasoning_and_mementos_come_back_structured(first_turn, default_server, tokenizer, token_ids):
    message = first_turn.message
    trace = MementoTrace.from_text(f"<think>{message.reasoning_content}</think>{message.content}")
    assert len(trace.blocks) == len(SHAPE) and trace.answer == message.content
    assert message.model_extra["mementos"] == trace.mementos
    # every delimiter is its single special id
    ids = first_turn.model_extra["response_token_ids"]
    assert ids.count(token_ids.block_start) == ids.count(token_ids.summary_end) == len(SHAPE)
    assert first_turn.model_extra["meta_info"]["memento"]["blocks_evicted"] == len(SHAPE)
    # the same tokens as /generate on the chat template's prompt
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    params = {"temperature": 0, "max_new_tokens": 64, "skip_special_tokens": False}
    params["structural_tag"] = memento_structural_tag(SHAPE, answer_tokens=4)
    raw = requests.post(
        f"{default_server.url}/generate", json={"input_ids": prompt, "sampling_params": params}, timeout=120
    ).json()
    assert raw["output_ids"] == ids


def test_streaming_delivers_the_same_reasoning_and_each_memento_when_it_closes(client, first_turn):
    reasoning, content, mementos = "", "", []
    for chunk in ask(client, [{"role": "user", "content": QUESTION}], stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += delta.reasoning_content or ""
        content += delta.content or ""
        closed_here = (delta.model_extra or {}).get("mementos") or []
        mementos += closed_here
        if closed_here:
            assert reasoning.count("<|summary_end|>") == len(mementos)
    assert reasoning == first_turn.message.reasoning_content
    assert content == first_turn.message.content
    assert mementos == first_turn.message.model_extra["mementos"]


def test_a_second_turn_replays_the_mementos_and_reuses_the_first_turn(client, first_turn):
    message = first_turn.message
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": message.content, "reasoning_content": message.reasoning_content},
        {"role": "user", "content": "And if Bob gives 2 back?"},
    ]
    second = ask(client, history).choices[0]
    stats = second.model_extra["meta_info"]["memento"]
    # the first turn's blocks came back in the prompt and were evicted at prefill
    assert stats["blocks_evicted"] == 2 * len(SHAPE)
    assert second.model_extra["meta_info"]["cached_tokens"] > 0  # the radix tree held the first turn
    assert len(second.message.model_extra["mementos"]) == len(SHAPE)


def test_anthropic_messages_still_answer_on_a_memento_server(default_server):
    """SGLang's Anthropic adapter reads the chat response; mementos must not break it."""
    reply = requests.post(
        f"{default_server.url}/v1/messages",
        json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}]},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["type"] == "message" and reply.json()["content"]
