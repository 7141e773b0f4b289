"""Problem sets that work offline: reasoning-gym's seeded tasks, CHAMP, a user's JSONL.

A set is named by a spec string: `rg:TASK[:COUNT]` (a reasoning-gym task, e.g.
`rg:gsm_symbolic:20`, checked by the task's own scorer), `champ[:COUNT]` (CHAMP's
competition problems from the `champ-dataset` wheel, checked with math-verify) or
`jsonl:PATH` (one `{"problem": ..., "answer": ..., "id": ...}` per line, math-verify).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from memento_sglang.eval.answers import math_equal

#: a problem's score for an extracted answer (None: nothing extracted), in [0, 1]
Scorer = Callable[[str | None], float]


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str
    source: str
    score: Scorer = field(compare=False, repr=False)


def load_problems(spec: str, *, seed: int = 0) -> list[Problem]:
    """The problems a spec string names (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "rg" and rest:
        task, _, count = rest.partition(":")
        return reasoning_gym_problems(task, int(count or 10), seed=seed)
    if kind == "champ":
        return champ_problems(int(rest) if rest else None)
    if kind == "jsonl" and rest:
        return jsonl_problems(Path(rest))
    raise ValueError(f"unknown problem set {spec!r}: use rg:TASK[:COUNT], champ[:COUNT] or jsonl:PATH")


def reasoning_gym_problems(task: str, count: int, *, seed: int = 0) -> list[Problem]:
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task, size=count, seed=seed)
    return [
        Problem(
            id=f"rg/{task}/{seed}/{i}",
            question=entry["question"],
            answer=str(entry["answer"]),
            source=f"rg:{task}",
            score=partial(_task_score, dataset, entry),
        )
        for i, entry in enumerate(dataset)
    ]


def _task_score(dataset: Any, entry: dict, answer: str | None) -> float:
    return float(dataset.score_answer(answer, entry))


def champ_problems(count: int | None = None) -> list[Problem]:
    import champ_dataset

    problems = list(champ_dataset.load("v0").problems.values())[:count]
    return [
        Problem(f"champ/{p.identifier}", p.text, p.answer, "champ", partial(_math_score, p.answer))
        for p in problems
    ]


def jsonl_problems(path: Path) -> list[Problem]:
    problems = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "answer" not in row or not ("problem" in row or "question" in row):
            raise ValueError(f"{path}:{n}: a problem needs 'problem' (or 'question') and 'answer'")
        answer = str(row["answer"])
        question = row.get("problem", row.get("question"))
        pid = str(row.get("id", f"{path.stem}/{n}"))
        problems.append(Problem(pid, question, answer, f"jsonl:{path.name}", partial(_math_score, answer)))
    return problems


def _math_score(gold: str, answer: str | None) -> float:
    return float(math_equal(answer, gold))
