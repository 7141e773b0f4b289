"""xgrammar structural tags that force the Memento structure token-exactly.

`token` elements emit each delimiter as its single special-token id (EBNF/regex
string literals would let a model spell a delimiter with ordinary tokens, which a
token-id tracker cannot see); `any_tokens` with `exclude_tokens` keeps every
special token out of free text and its `max_tokens` is the block/memento budget.
Send the result as `sampling_params["structural_tag"]` with
`skip_special_tokens: false`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from memento_sglang.constants import (
    BLOCK_END,
    BLOCK_START,
    CHATML_TOKENS,
    END_THINK,
    MEMENTO_TOKENS,
    SUMMARY_END,
    SUMMARY_START,
    THINK,
)

__all__ = [
    "BLOCK_END", "BLOCK_START", "CHATML_TOKENS", "END_THINK", "MEMENTO_TOKENS", "SUMMARY_END",
    "SUMMARY_START", "THINK", "BlockBudget", "memento_structural_tag",
]  # fmt: skip


@dataclass(frozen=True)
class BlockBudget:
    """Upper bounds on one block's content and its memento, in tokens; with `exact`,
    the lengths themselves (benchmarks need identical work with and without eviction)."""

    block_tokens: int
    memento_tokens: int
    exact: bool = False


def json_schema_of(schema: dict | type) -> dict:
    """A JSON schema as given, or a pydantic model's."""
    if isinstance(schema, dict):
        return schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    raise TypeError(f"answer_schema must be a JSON schema dict or a pydantic model class, not {schema!r}")


def _token(text: str) -> dict:
    return {"type": "token", "token": text}


def _free_text(max_tokens: int | None, excluded: Sequence[str], exact: bool = False) -> dict:
    if exact and max_tokens is not None:
        # Spelled out: xgrammar 0.2.7 drops `exclude_tokens` after the first iteration
        # of a `repeat` (tests/unit/test_structural_tag.py shows it).
        one = {"type": "exclude_token", "exclude_tokens": list(excluded)}
        return {"type": "sequence", "elements": [one] * max_tokens}
    element: dict = {"type": "any_tokens", "exclude_tokens": list(excluded)}
    if max_tokens is not None:
        element["max_tokens"] = max_tokens
    return element


def _answer(
    max_tokens: int | None, excluded: Sequence[str], regex: str | None, schema: dict | type | None
) -> dict:
    if regex is not None and schema is not None:
        raise ValueError("give answer_regex or answer_schema, not both")
    if regex is not None:
        return {"type": "regex", "pattern": regex}
    if schema is not None:
        schema = json_schema_of(schema)
        # bounded whitespace: a model may otherwise pad between JSON tokens forever
        return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": 1}
    return _free_text(max_tokens, excluded)


def block_elements(budget: BlockBudget, excluded: Sequence[str]) -> list[dict]:
    """One block and its memento; a zero budget means no free text at that place."""
    elements = [_token(BLOCK_START)]
    if budget.block_tokens:
        elements.append(_free_text(budget.block_tokens, excluded, budget.exact))
    elements += [_token(BLOCK_END), _token(SUMMARY_START)]
    if budget.memento_tokens:
        elements.append(_free_text(budget.memento_tokens, excluded, budget.exact))
    elements.append(_token(SUMMARY_END))
    return elements


def _one_or_more(block: list[dict], at_most: int | None) -> dict:
    """`block` once, then more: unbounded (`plus`), or nested `optional`s up to `at_most`
    (xgrammar's `repeat` loses `exclude_tokens` after its first iteration)."""
    if at_most is None:
        return {"type": "plus", "content": {"type": "sequence", "elements": block}}
    if at_most < 1:
        raise ValueError(f"max_blocks must be at least 1, got {at_most}")
    tail: list[dict] = []
    for _ in range(at_most - 1):
        tail = [{"type": "optional", "content": {"type": "sequence", "elements": block + tail}}]
    return {"type": "sequence", "elements": block + tail}


def memento_structural_tag(
    blocks: Sequence[BlockBudget] | BlockBudget,
    *,
    answer_tokens: int | None = None,
    resume_open_block: BlockBudget | None = None,
    in_think: bool = False,
    extra_excluded: Sequence[str] = CHATML_TOKENS,
    answer_regex: str | None = None,
    answer_schema: dict | type | None = None,
    max_blocks: int | None = None,
) -> str:
    """`<think>` + blocks + `</think>` + answer, as a JSON structural tag.

    `blocks` as a sequence fixes the number of blocks; a single `BlockBudget` lets
    the model write one or more blocks (`plus`), at most `max_blocks` when given.
    `resume_open_block` is for a prompt
    that already ends inside a block (after `<think>...<|block_start|>...`): the
    output first finishes that block and its memento. `in_think` is for a prompt that
    already opened `<think>` (and may hold closed blocks): no second `<think>`.
    The answer is free text (at most `answer_tokens`), or matches `answer_regex`, or is
    JSON valid under `answer_schema` (a JSON schema, or a pydantic model class).
    """
    excluded = [*MEMENTO_TOKENS, *extra_excluded]
    if resume_open_block is None:
        elements: list[dict] = [] if in_think else [_token(THINK)]
    else:
        elements = block_elements(resume_open_block, excluded)[1:]
    if isinstance(blocks, BlockBudget):
        elements.append(_one_or_more(block_elements(blocks, excluded), max_blocks))
    elif max_blocks is not None:
        raise ValueError("max_blocks goes with a single BlockBudget (a sequence fixes the count)")
    else:
        for budget in blocks:
            elements += block_elements(budget, excluded)
    elements.append(_token(END_THINK))
    elements.append(_answer(answer_tokens, excluded, answer_regex, answer_schema))
    return json.dumps({"type": "structural_tag", "format": {"type": "sequence", "elements": elements}})
