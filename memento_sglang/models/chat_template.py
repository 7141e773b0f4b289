"""The chat template of the embedded Memento models: ChatML, Qwen3 style.

An assistant turn in the history that carries `reasoning_content` (as SGLang's chat
API returns it, delimiters included) is replayed as `<think>reasoning</think>content`:
the Memento server hides its closed blocks at prefill, so the next turn sees that
turn's mementos and answer, as the model did, and the radix cache can reuse its KV.
`enable_thinking=False` (a chat_template_kwargs) opens and closes an empty `<think>`.
"""

from __future__ import annotations

import json

_DEFAULT_SYSTEM = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n' + DEFAULT + '<|im_end|>\\n' }}"
    "{%- endif %}"
)
_TURNS = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.get('reasoning_content') %}"
    "{{- '<think>' + message['reasoning_content'] + '</think>' }}"
    "{%- endif %}"
    "{{- (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}{{- '<think></think>' }}{%- endif %}"
    "{%- endif %}"
)


def memento_chat_template(default_system: str | None = None) -> str:
    """The template; with `default_system`, a conversation without a system message
    gets that one (as the model was trained with it)."""
    if default_system is None:
        return _TURNS
    return _DEFAULT_SYSTEM.replace("DEFAULT", json.dumps(default_system)) + _TURNS


MEMENTO_CHAT_TEMPLATE = memento_chat_template()
