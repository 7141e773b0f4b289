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
"""

from __future__ import annotations

import json
from typing import Any

from sglang.lang.ir import SglConstantText, SglExprList, SglGen

from memento_sglang.frontend.structural_tag import (
    BLOCK_END,
    BLOCK_START,
    CHATML_TOKENS,
    MEMENTO_TOKENS,
    SUMMARY_END,
    SUMMARY_START,
    _free_text,
    _token,
)

#: Sampling fields SGLang's frontend drops and `memento_gen` passes through.
EXTRA_FIELDS = ("structural_tag", "custom_params", "skip_special_tokens", "no_stop_trim", "ebnf")
EXTRA_ATTRIBUTE = "memento_extra"


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
    setattr(gen.sampling_params, EXTRA_ATTRIBUTE, extra)
    return gen


def _segment_tag(budget: int, closer: str) -> str:
    """Free text of at most `budget` tokens (no special token), then `closer` as one id."""
    elements = [_free_text(budget, [*MEMENTO_TOKENS, *CHATML_TOKENS]), _token(closer)]
    return json.dumps({"type": "structural_tag", "format": {"type": "sequence", "elements": elements}})


def memento_block(
    name: str,
    *,
    max_block_tokens: int,
    max_memento_tokens: int,
    memento_name: str | None = None,
    **gen_kwargs: Any,
) -> SglExprList:
    """One reasoning block (variable `name`) and its memento (`memento_name`, default
    `name + "_memento"`), delimiters included in the program text as single ids.

    Each part is one server request whose prompt holds the program so far, so closed
    blocks reach the server in the prompt: the Memento server hides and compacts them
    (masked prefill) and the Memento radix cache shares the mementos between calls.
    """
    memento_name = memento_name or f"{name}_memento"
    block = memento_gen(
        name, structural_tag=_segment_tag(max_block_tokens, BLOCK_END), stop=[BLOCK_END],
        max_new_tokens=max_block_tokens + 1, **gen_kwargs,
    )  # fmt: skip
    memento = memento_gen(
        memento_name, structural_tag=_segment_tag(max_memento_tokens, SUMMARY_END),
        stop=[SUMMARY_END], max_new_tokens=max_memento_tokens + 2, **gen_kwargs,
    )  # fmt: skip
    return SglExprList(
        [
            SglConstantText(BLOCK_START),
            block,
            SglConstantText(BLOCK_END + SUMMARY_START),
            memento,
            SglConstantText(SUMMARY_END),
        ]
    )


# --------------------------------------------------- hooks (registered in hooks.py)


def keep_extra_fields(result: Any, executor: Any, sampling_params: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER `StreamExecutor._resolve_sampling_params`: the resolved copy keeps the extras."""
    extra = getattr(sampling_params, EXTRA_ATTRIBUTE, None)
    if extra:
        setattr(result, EXTRA_ATTRIBUTE, dict(extra))
    return None


def send_extra_fields(result: dict, params: Any, *args: Any, **kwargs: Any) -> dict | None:
    """AFTER `SglSamplingParams.to_srt_kwargs`: the extras go to the server as given."""
    extra = getattr(params, EXTRA_ATTRIBUTE, None)
    return {**result, **extra} if extra else None
