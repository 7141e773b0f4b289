"""SGLang's `@sgl.function` interpreter, taught two things the Memento front end needs.

1. Extra sampling fields: the interpreter keeps only the sampling fields it knows;
   `attach_extra_fields` hangs the others (`structural_tag`, `custom_params`, ...) on
   an `SglGen`'s sampling params, and two hooks carry them into the request body.
2. Result variables: a gen given a `ResultVariables` (`attach_result_variables`) sets
   more program variables from its text once it ran (`memento_reasoning`: blocks,
   mementos, answer). Readers of those variables wait for the call like for the
   gen's own variable.

The hook bodies live here (they touch `StreamExecutor` state); the front end only
calls the two `attach_*` functions. Registered in `hooks.py` (`FRONTEND` section).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

_EXTRA_ATTRIBUTE = "memento_extra"
_RESULT_ATTRIBUTE = "memento_result_variables"


class ResultVariables(Protocol):
    """How a gen's text becomes more program variables."""

    def names(self, gen_name: str) -> tuple[str, ...]:
        """The variables `values` sets (declared before the call, so readers wait)."""
        ...

    def values(self, gen_name: str, text: str, meta_info: dict) -> dict[str, Any]:
        """The variables from the gen's text and meta info; raises on a malformed text."""
        ...


def attach_extra_fields(sampling_params: Any, extra: dict[str, Any]) -> None:
    """`extra` goes into the request's sampling params as given."""
    setattr(sampling_params, _EXTRA_ATTRIBUTE, dict(extra))


def attach_result_variables(gen: Any, variables: ResultVariables) -> None:
    setattr(gen, _RESULT_ATTRIBUTE, variables)


# ------------------------------------------------------------- hook bodies


def keep_extra_fields(result: Any, sampling_params: Any) -> None:
    """AFTER `StreamExecutor._resolve_sampling_params`: the resolved copy keeps the extras."""
    extra = getattr(sampling_params, _EXTRA_ATTRIBUTE, None)
    if extra:
        attach_extra_fields(result, extra)


def send_extra_fields(result: dict, params: Any) -> dict | None:
    """AFTER `SglSamplingParams.to_srt_kwargs`: the extras go to the server as given."""
    extra = getattr(params, _EXTRA_ATTRIBUTE, None)
    return {**result, **extra} if extra else None


def declare_result_variables(executor: Any, expr: Any) -> None:
    """AFTER `StreamExecutor._init_var_event`: reading a result variable waits for the call."""
    variables: ResultVariables | None = getattr(expr, _RESULT_ATTRIBUTE, None)
    if variables is None:
        return
    for name in variables.names(expr.name):
        executor.variable_event[name] = threading.Event()
        if executor.stream:
            executor.stream_var_event[name] = threading.Event()


def set_result_variables(executor: Any, expr: Any) -> None:
    """AFTER `StreamExecutor._execute_gen`: the gen's text becomes its result variables.

    The events are set whatever happens, so a reader never waits forever; a malformed
    text raises, which fails the program like any interpreter error.
    """
    variables: ResultVariables | None = getattr(expr, _RESULT_ATTRIBUTE, None)
    if variables is None:
        return
    try:
        meta_info = executor.meta_info.get(expr.name) or {}
        executor.variables.update(variables.values(expr.name, executor.variables[expr.name], meta_info))
    finally:
        for name in variables.names(expr.name):
            executor.variable_event[name].set()
            if executor.stream:
                executor.stream_var_event[name].set()
