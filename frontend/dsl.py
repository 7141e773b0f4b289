"""`@sgl.function` primitives for Memento programs: `memento_gen` and `memento_block`.

SGLang's interpreter keeps only the sampling fields it knows; `memento_gen` carries
the others (`structural_tag`, `custom_params`, `skip_special_tokens`, ...) through
two named hooks (`sglang_plugin/hooks.py`, `FRONTEND` section), so they reach the
server unchanged. `memento_block` writes one block and its memento, each under a
structural tag that emits every delimiter as its single special-token id and
closes it even when its budget runs out.

    @sgl.function
    def solve(s, question):
        s += question + "<think>"
        for i in range(3):
            s += memento_block(f"step{i}", max_block_tokens=256, max_memento_tokens=48)
        s += "</think>" + sgl.gen("answer", max_tokens=64)

`memento_reasoning` is the one-request form: the whole trace under one structural tag,
its blocks, mementos and answer then set as program variables (two more hooks).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from sglang.lang.ir import SglConstantText, SglExprList, SglGen

from memento_sglang.constants import (
    BLOCK_END,
    BLOCK_START,
    CHATML_TOKENS,
    END_OF_TURN,
    GRAMMAR_BACKENDS,
    MEMENTO_TOKENS,
    SUMMARY_END,
    SUMMARY_START,
)
from memento_sglang.frontend.lark_grammar import lark_segment, memento_lark_grammar
from memento_sglang.frontend.structural_tag import BlockBudget, _free_text, _token, memento_structural_tag
from memento_sglang.frontend.trace import MementoTrace
from memento_sglang.sglang_plugin import interpreter

__all__ = ["EXTRA_FIELDS", "memento_block", "memento_gen", "memento_reasoning"]

#: Sampling fields SGLang's frontend drops and `memento_gen` passes through.
EXTRA_FIELDS = ("structural_tag", "custom_params", "skip_special_tokens", "no_stop_trim", "ebnf")
Grammar = Literal["xgrammar", "llguidance"]  # the server's --grammar-backend (GRAMMAR_BACKENDS)


def _ensure_hooks() -> None:
    from memento_sglang.sglang_plugin import load

    load()


def memento_gen(name: str | None = None, **kwargs: Any) -> SglGen:
    """`sgl.gen` plus the fields SGLang's frontend would drop (see `EXTRA_FIELDS`).

    Delimiters stay in the text (`skip_special_tokens: false`) unless told otherwise.
    """
    _ensure_hooks()
    extra = {key: kwargs.pop(key) for key in EXTRA_FIELDS if key in kwargs}
    extra.setdefault("skip_special_tokens", False)
    if "max_tokens" in kwargs:
        kwargs["max_new_tokens"] = kwargs.pop("max_tokens")
    gen = SglGen(name, **kwargs)
    interpreter.attach_extra_fields(gen.sampling_params, extra)
    return gen


def _segment(budget: int, closer: str, grammar: Grammar) -> dict[str, str]:
    """Free text of at most `budget` tokens (no special token), then `closer` as one id."""
    if grammar == "llguidance":
        return {"ebnf": lark_segment(budget, closer)}
    elements = [_free_text(budget, [*MEMENTO_TOKENS, *CHATML_TOKENS]), _token(closer)]
    tag = {"type": "structural_tag", "format": {"type": "sequence", "elements": elements}}
    return {"structural_tag": json.dumps(tag)}


def _check_grammar(grammar: str) -> None:
    if grammar not in GRAMMAR_BACKENDS:
        raise ValueError(
            f"grammar must be 'xgrammar' or 'llguidance' (the server's --grammar-backend), not {grammar!r}"
        )


def memento_block(
    name: str,
    *,
    max_block_tokens: int,
    max_memento_tokens: int,
    memento_name: str | None = None,
    block_prefix: str = "",
    memento_prefix: str = "",
    grammar: Grammar = "xgrammar",
    **gen_kwargs: Any,
) -> SglExprList:
    """One reasoning block (variable `name`) and its memento (`memento_name`, default
    `name + "_memento"`), delimiters included in the program text as single ids.

    `block_prefix` / `memento_prefix` are fixed text the model continues (a cue such
    as "Step 2:" steers a model not trained on Memento); the variables hold only what
    the model wrote. Each part is one server request whose prompt holds the program so far, so closed
    blocks reach the server in the prompt: the Memento server hides and compacts them
    (masked prefill) and the Memento radix cache shares the mementos between calls.
    """
    _check_grammar(grammar)
    memento_name = memento_name or f"{name}_memento"
    block = memento_gen(
        name, **_segment(max_block_tokens, BLOCK_END, grammar), stop=[BLOCK_END],
        max_new_tokens=max_block_tokens + 1, **gen_kwargs,
    )  # fmt: skip
    memento = memento_gen(
        memento_name, **_segment(max_memento_tokens, SUMMARY_END, grammar),
        stop=[SUMMARY_END], max_new_tokens=max_memento_tokens + 2, **gen_kwargs,
    )  # fmt: skip
    return SglExprList(
        [
            SglConstantText(BLOCK_START + block_prefix),
            block,
            SglConstantText(BLOCK_END + SUMMARY_START + memento_prefix),
            memento,
            SglConstantText(SUMMARY_END),
        ]
    )


def memento_reasoning(
    name: str,
    *,
    max_block_tokens: int,
    max_memento_tokens: int,
    max_blocks: int | None = None,
    blocks: int | None = None,
    answer_tokens: int | None = None,
    answer_regex: str | None = None,
    answer_schema: dict | type | None = None,
    in_think: bool = False,
    grammar: Grammar = "xgrammar",
    **gen_kwargs: Any,
) -> SglGen:
    """The whole `<think> blocks </think> answer` in one server request, its structure
    grammar-enforced: one to `max_blocks` blocks, exactly `blocks`, or one or more.

    Variables: `name` (the text), `name_blocks`, `name_mementos`, `name_answer`, and
    `name_trace` (a `MementoTrace` with the server's stats). The server evicts each
    block as its memento closes. `max_tokens` defaults to the structure's bound (plus
    `answer_tokens`, or 256 for the answer) when the block count is bounded.
    """
    if gen_kwargs.get("n", 1) != 1:
        raise ValueError("memento_reasoning samples one trace; use s.fork(n) for several")
    if blocks is not None and max_blocks is not None:
        raise ValueError("give blocks (exact) or max_blocks (at most), not both")
    _check_grammar(grammar)
    budget = BlockBudget(max_block_tokens, max_memento_tokens)
    shape = budget if blocks is None else [budget] * blocks
    options: dict[str, Any] = {
        "answer_tokens": answer_tokens, "in_think": in_think, "answer_regex": answer_regex,
        "answer_schema": answer_schema, "max_blocks": max_blocks,
    }  # fmt: skip
    constraint = (
        {"ebnf": memento_lark_grammar(shape, **options)}
        if grammar == "llguidance"
        else {"structural_tag": memento_structural_tag(shape, **options)}
    )
    count = blocks or max_blocks
    budget_given = "max_tokens" in gen_kwargs or "max_new_tokens" in gen_kwargs
    if not count and not budget_given:
        raise ValueError("an unbounded block count needs max_tokens (or give max_blocks / blocks)")
    if count and not budget_given:
        per_block = max_block_tokens + max_memento_tokens + 4  # + its four delimiters
        gen_kwargs["max_new_tokens"] = 2 + count * per_block + (answer_tokens or 256)
    gen = memento_gen(name, **constraint, **gen_kwargs)
    interpreter.attach_result_variables(gen, _TraceVariables())
    return gen


class _TraceVariables:
    """`memento_reasoning`'s variables: the text parsed as a `MementoTrace`."""

    SUFFIXES = ("trace", "blocks", "mementos", "answer")  # `name_<suffix>`

    def names(self, gen_name: str) -> tuple[str, ...]:
        return tuple(f"{gen_name}_{suffix}" for suffix in self.SUFFIXES)

    def values(self, gen_name: str, text: str, meta_info: dict) -> dict[str, Any]:
        trace = MementoTrace.from_text(text.removesuffix(END_OF_TURN), stats=meta_info.get("memento"))
        return {
            f"{gen_name}_trace": trace,
            f"{gen_name}_blocks": [b.text for b in trace.blocks],
            f"{gen_name}_mementos": trace.mementos,
            f"{gen_name}_answer": trace.answer,
        }
