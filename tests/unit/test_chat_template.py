"""The Memento chat template: ChatML, reasoning replayed, thinking switch, default system."""

from __future__ import annotations

from jinja2.sandbox import ImmutableSandboxedEnvironment

from memento_sglang.models.chat_template import MEMENTO_CHAT_TEMPLATE, memento_chat_template

REASONING = "<|block_start|>x = 5<|block_end|><|summary_start|>x is 5<|summary_end|>"
HISTORY = [
    {"role": "user", "content": "Solve"},
    {"role": "assistant", "content": "5", "reasoning_content": REASONING},
    {"role": "user", "content": "Double it"},
]


def render(template: str, messages: list[dict], **kwargs) -> str:
    return ImmutableSandboxedEnvironment().from_string(template).render(messages=messages, **kwargs)


def test_history_replays_reasoning_and_opens_the_assistant_turn():
    text = render(MEMENTO_CHAT_TEMPLATE, HISTORY, add_generation_prompt=True)
    assert text == (
        "<|im_start|>user\nSolve<|im_end|>\n"
        f"<|im_start|>assistant\n<think>{REASONING}</think>5<|im_end|>\n"
        "<|im_start|>user\nDouble it<|im_end|>\n<|im_start|>assistant\n"
    )


def test_thinking_off_closes_an_empty_think():
    text = render(MEMENTO_CHAT_TEMPLATE, HISTORY[:1], add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think></think>")


def test_default_system_prompt_only_without_a_system_message():
    template = memento_chat_template('Be "brief"')
    assert render(template, HISTORY[:1]).startswith(
        '<|im_start|>system\nBe "brief"<|im_end|>\n<|im_start|>user'
    )
    with_system = [{"role": "system", "content": "S"}, *HISTORY[:1]]
    assert render(template, with_system) == render(MEMENTO_CHAT_TEMPLATE, with_system)
