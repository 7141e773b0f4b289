"""Reading chain-of-thought traces: JSONL rows -> `TraceRecord`s, and a trace -> its parts.

Datasets are large and dirty, so a bad row never stops a run: `read_traces` yields a
`BadRow` (with its 1-based line number and why) in its place and carries on. Two row
shapes are read:

- flat: `cot` (or `full_cot`) holding `<think>...</think>answer`, optional `problem` and
  `task_id`; every other key is kept in `metadata`;
- ShareGPT: `conversations: [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]`
  (`user` / `assistant` and `role` / `content` are read too, a `system` turn is kept in
  `metadata["system"]`); the human turn is the problem, the assistant turn the trace.

A row without `task_id` gets one derived from its line number and its trace, so a rerun
over the same file (a resumed pipeline, a checkpoint of processed ids) names it the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from memento_sglang.constants import END_THINK, THINK

__all__ = ["BadRow", "CotParts", "TraceRecord", "read_traces", "split_cot"]

_HUMAN = frozenset({"human", "user"})
_ASSISTANT = frozenset({"gpt", "assistant"})
_SYSTEM = frozenset({"system"})


class TraceRecord(BaseModel):
    """One input trace: what the pipeline segments, and everything else to carry along."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    problem: str | None = None
    #: the whole `<think>...</think>answer` text, as read
    cot: str
    #: every other key of the input row, unchanged (source, domain, difficulty, ...)
    metadata: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that could not be read: reported, not raised, so one bad row costs one row."""

    line: int  # 1-based line number in the file
    reason: str


@dataclass(frozen=True, slots=True)
class CotParts:
    """A trace cut at its think tags; `THINK + think_prefix + reasoning + END_THINK + answer`
    gives the trace back, up to whitespace around the tags and the answer."""

    #: whitespace between `<think>` and the first reasoning character (often "\\n" or "")
    think_prefix: str
    #: the reasoning, from its first non-whitespace character up to `</think>` (verbatim)
    reasoning: str
    #: the text after `</think>`, stripped of surrounding whitespace
    answer: str


def split_cot(cot: str) -> CotParts:
    """Cut `<think>...</think>answer` into its parts; raise `ValueError` saying what is wrong.

    `<think>` may be missing (some datasets drop it): the reasoning then starts the text.
    Exactly one `</think>` is required, and no second `<think>`: a trace with nested or
    repeated tags would tokenize into structure the model must not see inside a block.
    """
    close = cot.find(END_THINK)
    if close < 0:
        raise ValueError(f"no {END_THINK} in the trace: it has no end of reasoning to cut at")
    if cot.find(END_THINK, close + len(END_THINK)) >= 0:
        raise ValueError(f"more than one {END_THINK} in the trace")
    head = cot[:close]
    start = 0
    opened = head.find(THINK)
    if opened >= 0:
        if head[:opened].strip():
            raise ValueError(f"text before {THINK}: {head[:opened].strip()[:60]!r}")
        start = opened + len(THINK)
    if head.find(THINK, start) >= 0:
        raise ValueError(f"a second {THINK} inside the reasoning")
    if THINK in cot[close:]:
        raise ValueError(f"{THINK} after {END_THINK}")
    inner = head[start:]
    body = inner.lstrip()
    return CotParts(
        think_prefix=inner[: len(inner) - len(body)],
        reasoning=body,
        answer=cot[close + len(END_THINK) :].strip(),
    )


def read_traces(path: Path) -> Iterator[TraceRecord | BadRow]:
    """Yield each non-blank JSONL line of `path` as a `TraceRecord`, or a `BadRow` saying why not.

    Raises only when the file cannot be opened. A repeated `task_id` is a `BadRow` (the
    second one): the pipeline checkpoints by id, so two traces under one id would lose one.
    """
    seen: set[str] = set()
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            result = _read_line(raw, number)
            if result is None:
                continue
            if isinstance(result, TraceRecord):
                if result.task_id in seen:
                    result = BadRow(number, f"duplicate task_id {result.task_id!r}")
                else:
                    seen.add(result.task_id)
            yield result


def _read_line(raw: bytes, number: int) -> TraceRecord | BadRow | None:
    """One line -> a record, a bad row, or None when blank."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as e:
        return BadRow(number, f"not UTF-8: {e}")
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return BadRow(number, f"not JSON: {e}")
    if not isinstance(row, dict):
        return BadRow(number, f"not a JSON object but {type(row).__name__}")
    try:
        return _record(row, number)
    except ValueError as e:
        return BadRow(number, str(e))


def _record(row: dict[str, Any], number: int) -> TraceRecord:
    """Build the record of one parsed row; raise `ValueError` with the reason it is bad."""
    rest = dict(row)
    if "cot" in rest or "full_cot" in rest:
        key = "cot" if "cot" in rest else "full_cot"
        cot = _text(rest.pop(key), f"`{key}`")
        problem = _optional_text(rest.pop("problem", None), "`problem`")
    elif "conversations" in rest:
        problem, cot, system = _conversation(rest.pop("conversations"))
        if system is not None:
            rest.setdefault("system", system)
        if "problem" in rest:  # a flat `problem` next to the conversation: kept, not used
            rest["original_problem"] = rest.pop("problem")
    else:
        raise ValueError("no `cot` and no `conversations`")
    try:
        parts = split_cot(cot)
    except ValueError as e:
        raise ValueError(f"`cot` is not a trace: {e}") from None
    if not parts.reasoning.strip():
        raise ValueError("`cot` has an empty reasoning: nothing to segment")
    task_id = _task_id(rest.pop("task_id", None), cot, number)
    return TraceRecord(task_id=task_id, problem=problem, cot=cot, metadata=rest)


def _conversation(turns: Any) -> tuple[str, str, str | None]:
    """(problem, cot, system prompt) of a ShareGPT conversation with one human and one assistant turn."""
    if not isinstance(turns, list):
        raise ValueError(f"`conversations` is not a list but {type(turns).__name__}")
    by_role: dict[str, list[str]] = {"human": [], "assistant": [], "system": []}
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"`conversations[{index}]` is not an object")
        role = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        name = (
            "human"
            if role in _HUMAN
            else "assistant"
            if role in _ASSISTANT
            else "system"
            if role in _SYSTEM
            else None
        )
        if name is None:
            raise ValueError(f"`conversations[{index}]` has an unknown speaker {role!r}")
        by_role[name].append(_text(value, f"`conversations[{index}]` value"))
    if len(by_role["human"]) != 1 or len(by_role["assistant"]) != 1:
        raise ValueError(
            f"`conversations` has {len(by_role['human'])} human and {len(by_role['assistant'])} "
            "assistant turns: one of each is needed"
        )
    system = "\n".join(by_role["system"]) if by_role["system"] else None
    return by_role["human"][0], by_role["assistant"][0], system


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string but {type(value).__name__}")
    return value


def _optional_text(value: Any, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _task_id(value: Any, cot: str, number: int) -> str:
    """The row's own id (strings and integers), or a stable one from its line and trace."""
    if value is None:
        digest = hashlib.sha256(f"{number}\x00{cot}".encode()).hexdigest()[:16]
        return f"trace-{digest}"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"`task_id` is not a string or an integer but {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise ValueError("`task_id` is empty")
    return str(value)
