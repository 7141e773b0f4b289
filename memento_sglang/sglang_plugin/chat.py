"""OpenAI-compatible chat on a Memento server: `reasoning_content` plus `mementos`.

SGLang's chat API already splits `<think>...</think>` into `reasoning_content` through
a reasoning parser. The `memento` parser (the default with `--memento-config`) keeps
the Memento delimiters in the text (they are special tokens, which chat requests
skip by default), so `reasoning_content` is the trace as the model wrote it: a client
can parse it (`MementoTrace.from_text`) or send it back in the next turn. Each choice
message also gets `mementos`, the closed mementos in order; a stream adds
`delta.mementos` to the chunk in which a memento closes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from sglang.srt.entrypoints.openai.protocol import (
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
)
from sglang.srt.parser.reasoning_parser import BaseReasoningFormatDetector, ReasoningParser

from memento_sglang.constants import CHATML_TOKENS, END_THINK, REASONING_PARSER, SUMMARY_END, THINK
from memento_sglang.text import closed_mementos

_SSE_DATA = "data: "


class MementoReasoningDetector(BaseReasoningFormatDetector):
    """`<think> blocks and mementos </think> answer`, Qwen3 style, delimiters kept."""

    def __init__(
        self,
        stream_reasoning: bool = True,
        force_reasoning: bool = False,
        continue_final_message: bool = False,
        previous_content: str = "",
        force_nonempty_content: bool = False,
    ) -> None:
        super().__init__(
            THINK,
            END_THINK,
            think_excluded_tokens=[t for t in CHATML_TOKENS if t != CHATML_TOKENS[0]],  # not <|im_start|>
            force_reasoning=force_reasoning,
            stream_reasoning=stream_reasoning,
            continue_final_message=continue_final_message,
            previous_content=previous_content,
            force_nonempty_content=force_nonempty_content,
        )

    def get_think_end_token_ids(self, tokenizer: Any) -> list[int]:
        """No ids: a Memento grammar (structural tag) describes the reasoning too.

        With end ids SGLang wraps every grammar in its ReasonerGrammarBackend, which
        leaves the reasoning unconstrained until `</think>`; the structure would then
        no longer be grammar-enforced. (SGLang logs at startup that grammar-gated
        reasoning is off: that is this, and expected.)
        """
        return []


def register_reasoning_parser() -> None:
    """`--reasoning-parser memento` (SGLang reads its choices from this registry)."""
    ReasoningParser.DetectorMap.setdefault(REASONING_PARSER, MementoReasoningDetector)


def keep_delimiters(request: Any) -> None:
    """Chat requests skip special tokens by default; the Memento delimiters are some."""
    request.skip_special_tokens = False


class MementoChatMessage(ChatMessage):
    mementos: list[str] | None = None


class MementoChoice(ChatCompletionResponseChoice):
    message: MementoChatMessage


class MementoChatCompletionResponse(ChatCompletionResponse):
    """SGLang's response with `message.mementos`; still a `ChatCompletionResponse`, so
    every SGLang caller (the Anthropic adapter too) reads it as before."""

    choices: list[MementoChoice]


def with_mementos(response: Any) -> Any:
    """A non-streaming chat response with `message.mementos` on every choice."""
    if not isinstance(response, ChatCompletionResponse):
        return response  # an error response
    choices = []
    for choice in response.choices:
        reasoning = choice.message.reasoning_content or ""
        message = MementoChatMessage.model_construct(
            **dict(choice.message), mementos=closed_mementos(reasoning)
        )
        choices.append(MementoChoice.model_construct(**{**dict(choice), "message": message}))
    return MementoChatCompletionResponse.model_construct(**{**dict(response), "choices": choices})


async def stream_with_mementos(chunks: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    """SSE chunks as SGLang streams them; a chunk in which a memento closes also
    carries `delta.mementos` (the mementos that closed in it)."""
    reasoning: dict[int, str] = {}
    reported: dict[int, int] = {}
    try:
        async for chunk in chunks:
            yield _with_memento_delta(chunk, reasoning, reported)
    finally:
        await chunks.aclose()  # a client that hung up: SGLang's stream stops too


def _with_memento_delta(chunk: str, reasoning: dict[int, str], reported: dict[int, int]) -> str:
    if not chunk.startswith(_SSE_DATA) or chunk.startswith(_SSE_DATA + "[DONE]"):
        return chunk  # `event:` lines, the end marker
    data = json.loads(chunk[len(_SSE_DATA) :])
    changed = False
    for choice in data.get("choices") or []:
        delta = choice.get("delta") or {}
        piece = delta.get("reasoning_content")
        if not piece:
            continue
        index = choice.get("index", 0)
        reasoning[index] = reasoning.get(index, "") + piece
        if SUMMARY_END not in reasoning[index][-(len(piece) + len(SUMMARY_END)) :]:
            continue  # no memento closed here: skip the scan
        closed = closed_mementos(reasoning[index])
        if len(closed) > reported.get(index, 0):
            delta["mementos"] = closed[reported.get(index, 0) :]
            reported[index] = len(closed)
            changed = True
    return f"{_SSE_DATA}{json.dumps(data)}\n\n" if changed else chunk
