"""The Memento structure as an llguidance Lark grammar (`--grammar-backend llguidance`).

The same shapes as `memento_structural_tag`, for servers that run llguidance instead
of xgrammar. Delimiters are written `<|block_start|>`, llguidance's syntax for a
special token: each comes out as its single id, never spelled with ordinary tokens.
Free text is a `(.|\\n)*` lexeme, which no special token can enter, capped by the
rule's `max_tokens`. Send the result as `sampling_params["ebnf"]` with
`skip_special_tokens: false`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from memento_sglang.frontend.structural_tag import (
    BLOCK_END,
    BLOCK_START,
    END_THINK,
    SUMMARY_END,
    SUMMARY_START,
    THINK,
    BlockBudget,
    json_schema_of,
)

_TEXT = r"/(.|\n)*/"
_UNESCAPED_SLASH = re.compile(r"(?<!\\)((?:\\\\)*)/")  # a `/` not already escaped ends a Lark regex


class _Rules:
    """Named rules, one per distinct free-text budget."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._texts: dict[int | None, str] = {}

    def text(self, max_tokens: int | None) -> str:
        if max_tokens not in self._texts:
            name = f"text_{max_tokens}" if max_tokens is not None else "text_free"
            attrs = f"[max_tokens={max_tokens}]" if max_tokens is not None else ""
            self.lines.append(f"{name}{attrs}: {_TEXT}")
            self._texts[max_tokens] = name
        return self._texts[max_tokens]

    def block(self, budget: BlockBudget) -> str:
        if budget.exact:
            raise ValueError("exact budgets are an xgrammar structural-tag feature")
        parts = [BLOCK_START]
        if budget.block_tokens:
            parts.append(self.text(budget.block_tokens))
        parts += [BLOCK_END, SUMMARY_START]
        if budget.memento_tokens:
            parts.append(self.text(budget.memento_tokens))
        parts.append(SUMMARY_END)
        return " ".join(parts)


def memento_lark_grammar(
    blocks: Sequence[BlockBudget] | BlockBudget,
    *,
    answer_tokens: int | None = None,
    in_think: bool = False,
    answer_regex: str | None = None,
    answer_schema: dict | type | None = None,
    max_blocks: int | None = None,
) -> str:
    """`<think>` + blocks + `</think>` + answer as Lark text (see `memento_structural_tag`)."""
    if answer_regex is not None and answer_schema is not None:
        raise ValueError("give answer_regex or answer_schema, not both")
    rules = _Rules()
    if isinstance(blocks, BlockBudget):
        if max_blocks is not None and max_blocks < 1:
            raise ValueError(f"max_blocks must be at least 1, got {max_blocks}")
        rules.lines.append(f"block: {rules.block(blocks)}")
        body = "block+" if max_blocks is None else f"block{{1,{max_blocks}}}"
    else:
        if max_blocks is not None:
            raise ValueError("max_blocks goes with a single BlockBudget (a sequence fixes the count)")
        body = " ".join(f"({rules.block(b)})" for b in blocks)
    if answer_regex is not None:
        answer = "/" + _UNESCAPED_SLASH.sub(r"\1\\/", answer_regex) + "/"
    elif answer_schema is not None:
        schema = json_schema_of(answer_schema)
        answer = "%json " + json.dumps(schema)
    else:
        answer = rules.text(answer_tokens)
    start = " ".join(p for p in ("" if in_think else THINK, body, END_THINK, "answer") if p)
    return "\n".join([f"start: {start}", f"answer: {answer}", *rules.lines]) + "\n"


def lark_segment(max_tokens: int, closer: str) -> str:
    """Free text of at most `max_tokens` tokens, then the special token `closer`."""
    return f"start: text {closer}\ntext[max_tokens={max_tokens}]: {_TEXT}\n"
