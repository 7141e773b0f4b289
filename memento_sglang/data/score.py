"""Boundary scoring: how good a place to end a block is each gap between two sentences (0-3).

The sentences go to the model in windows of at most `window` boundaries (16, as in the
reference), all windows of a trace in one batched round. Each window's answer model is built
for that window: its `scores` list has exactly the window's boundary count (`min_length ==
max_length`), so the grammar cannot produce a list of the wrong length and there is nothing to
pad or truncate afterwards. Windows are balanced (sizes differ by at most one), so the last
window is never a lone boundary without context.

A few rules are certain enough to apply in code as well as in the prompt: a boundary after a
sentence that ends in ':' or '=' (it introduces what follows), or before one that opens with
"Therefore/Thus/Hence/So/Then" (it concludes what precedes), scores 0 whatever the model said.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from memento_sglang.data.llm import Ask, CallStats, Prompt, StructuredLLM, require

__all__ = [
    "SCORER_SYSTEM",
    "WINDOW_BOUNDARIES",
    "BoundaryScores",
    "boundary_windows",
    "pinned_to_zero",
    "score_boundaries",
    "scores_model",
    "window_prompt",
]

WINDOW_BOUNDARIES = 16
Score = Literal[0, 1, 2, 3]

SCORER_SYSTEM = """\
You judge where a long chain of reasoning can be cut into self-contained chunks. Each chunk \
will later be replaced by a short note of its results, so a good cut is a place where one \
line of thought is finished and the next has not started yet.

You see a passage with numbered markers <<<B1>>>, <<<B2>>>, ... between its sentences. Rate \
every marker on this scale:
0 = inside one thought: the sentences on either side belong together
1 = a weak pause: a small step inside the same piece of work
2 = a clear transition: a sub-result is reached, or a new step or check begins
3 = a major transition: a new approach, a new part of the problem, or a final verification

Always give 0 when:
- the sentence before the marker ends with ':' or '=' or '=>', or announces what comes next \
("Let's ...", "Substitute ...", "From equation ...");
- the sentence after the marker starts with Therefore, Thus, Hence, So or Then;
- the two sentences are the two sides of one computation ("Left side: ...", "Right side: ..."), \
an assumption and its check, or consecutive steps of a code or state trace;
- the sentence before the marker is a short lead-in (under ten words) to the next one.

Answer with JSON only: {"scores": [...]}, one integer 0-3 per marker, in marker order."""


@dataclass(frozen=True)
class BoundaryScores:
    """The scores of a trace's `n - 1` boundaries and how they were obtained."""

    scores: list[float]
    #: (first boundary, boundary count) of each window, in order
    windows: list[tuple[int, int]]
    #: boundaries the hard rules set to 0 (whatever the model answered)
    pinned: list[int]


def boundary_windows(n_sentences: int, size: int = WINDOW_BOUNDARIES) -> list[range]:
    """Boundary ranges covering `0..n_sentences - 2` in order, each at most `size` long, balanced.

    Boundary `i` lies between sentence `i` and sentence `i + 1`.
    """
    if size < 1:
        raise ValueError("a window needs at least one boundary")
    boundaries = max(n_sentences - 1, 0)
    if boundaries == 0:
        return []
    count = -(-boundaries // size)
    base, extra = divmod(boundaries, count)
    out, start = [], 0
    for k in range(count):
        length = base + (1 if k < extra else 0)
        out.append(range(start, start + length))
        start += length
    return out


@cache
def scores_model(count: int) -> type[BaseModel]:
    """The answer model of a window of `count` boundaries: exactly `count` scores 0-3."""
    if count < 1:
        raise ValueError("a window has at least one boundary")
    return create_model(
        f"BoundaryScores{count}",
        __config__=ConfigDict(extra="forbid"),
        scores=(Annotated[list[Score], Field(min_length=count, max_length=count)], ...),
    )


def window_prompt(sentences: Sequence[str], window: range) -> Prompt:
    """The passage of `window` (its sentences, markers between them) and what to answer."""
    first, last = window.start, window.stop  # sentences first..last (inclusive)
    parts = [sentences[first].strip()]
    for k, sentence in enumerate(sentences[first + 1 : last + 1], start=1):
        parts.append(f"<<<B{k}>>>")
        parts.append(sentence.strip())
    count = len(window)
    listing = "\n".join(f"B{k}: between sentence {k} and sentence {k + 1}" for k in range(1, count + 1))
    user = (
        f"PASSAGE ({count + 1} sentences, {count} markers):\n\n"
        + "\n".join(parts)
        + f"\n\nMARKERS:\n{listing}\n\n"
        + f'Return {{"scores": [...]}} with exactly {count} integers, B1 first.'
    )
    return Prompt(SCORER_SYSTEM, user)


_LEADS_IN = re.compile(r"(?:[:=]|=>|\u21d2)\s*$")
_OPENS_LEAD = re.compile(r"\s*(?:Let's|Let us|Substitut\w*|From equation)\b")
_CONCLUDES = re.compile(r"\s*(?:[*_]{1,2})?(?:Therefore|Thus|Hence|So|Then)\b")


def pinned_to_zero(before: str, after: str) -> bool:
    """Whether the hard rules fix the boundary between `before` and `after` at 0."""
    return bool(_LEADS_IN.search(before) or _OPENS_LEAD.match(before) or _CONCLUDES.match(after))


def score_boundaries(
    llm: StructuredLLM,
    sentences: Sequence[str],
    *,
    window: int = WINDOW_BOUNDARIES,
    stats: CallStats | None = None,
) -> BoundaryScores:
    """Scores of every boundary of `sentences` (length `n - 1`), one batched round of windows.

    Raises `LLMFailure` when a window never gets a valid answer.
    """
    windows = boundary_windows(len(sentences), window)
    asks = [Ask(window_prompt(sentences, w), scores_model(len(w))) for w in windows]
    answers = require(llm.ask(asks, stage="score", stats=stats), "boundary scoring")
    scores: list[float] = []
    for w, answer in zip(windows, answers, strict=True):
        values = answer.scores  # type: ignore[attr-defined]  # built by scores_model
        if len(values) != len(w):  # the model guarantees it; a broken validator must not shift scores
            raise AssertionError(f"window {w} got {len(values)} scores")
        scores.extend(float(v) for v in values)
    pinned = [i for i in range(len(scores)) if pinned_to_zero(sentences[i], sentences[i + 1])]
    for i in pinned:
        scores[i] = 0.0
    return BoundaryScores(scores, [(w.start, len(w)) for w in windows], pinned)
