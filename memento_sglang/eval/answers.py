"""Final answers out of model text, by an explicit rule, and math answer checking.

The rule is the user's choice, never guessed: `boxed` (the last `\\boxed{...}`, braces
balanced), `answer_tag` (the last `<answer>...</answer>`, reasoning-gym's convention),
`json` (the `"answer"` of the last JSON object), `last_line` (the last non-empty line,
without an `Answer:` label). Only the text after the last `</think>` is read, so a
block or a memento that mentions an answer never counts as the final one.
"""

from __future__ import annotations

import json
import re
from typing import Literal

ExtractRule = Literal["boxed", "answer_tag", "json", "last_line"]
RULES: tuple[ExtractRule, ...] = ("boxed", "answer_tag", "json", "last_line")

#: what the prompt asks for, per rule
INSTRUCTIONS: dict[ExtractRule, str] = {
    "boxed": "Put the final answer in \\boxed{}.",
    "answer_tag": "Put the final answer between <answer> and </answer>.",
    "json": 'End with a JSON object {"answer": ...} holding the final answer.',
    "last_line": "Write the final answer alone on the last line.",
}

_THINK_END = "</think>"
_LABEL = re.compile(r"^\s*(final answer|answer)\s*[:=]\s*", re.IGNORECASE)


def final_text(text: str) -> str:
    """The answer part of a completion: after the last `</think>`, or all of it."""
    return text.rsplit(_THINK_END, 1)[-1] if _THINK_END in text else text


def extract_answer(text: str, rule: ExtractRule) -> str | None:
    """The final answer `rule` finds in `text`; None when there is none."""
    text = final_text(text)
    if rule == "boxed":
        return _last_boxed(text)
    if rule == "answer_tag":
        found = re.findall(r"<answer>\s*(.*?)\s*</answer>", text, flags=re.DOTALL)
        return found[-1] if found and found[-1] else None
    if rule == "json":
        return _last_json_answer(text)
    if rule == "last_line":
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return _LABEL.sub("", lines[-1]).rstrip(".").strip() or None if lines else None
    raise ValueError(f"unknown extraction rule {rule!r}; known: {', '.join(RULES)}")


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip() or None
    return None  # unbalanced: cut off by max_new_tokens


def _last_json_answer(text: str) -> str | None:
    decoder = json.JSONDecoder()
    found = None
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "answer" in obj:
            found = obj["answer"]
    return None if found is None else str(found)


def math_equal(predicted: str | None, gold: str) -> bool:
    """Whether two math answers are equal (`math-verify`: numbers, fractions, LaTeX,
    sets, intervals); plain text falls back to a normalized string comparison."""
    if predicted is None:
        return False
    from math_verify import parse, verify

    gold_parsed = parse(_as_math(gold))
    predicted_parsed = parse(_as_math(predicted))
    if gold_parsed and predicted_parsed and verify(gold_parsed, predicted_parsed):
        return True
    return _normalized(predicted) == _normalized(gold)


def _as_math(answer: str) -> str:
    """math-verify reads LaTeX between delimiters; a bare answer gets them."""
    answer = answer.strip()
    return answer if "$" in answer or "\\boxed" in answer else f"${answer}$"


def _normalized(answer: str) -> str:
    return re.sub(r"\s+", " ", answer.strip().strip(".").replace("$", "")).lower()
