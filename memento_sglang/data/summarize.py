"""Mementos: compress each block, judge the memento, refine the weak ones (the paper's T = 2 loop).

One iteration is one batched round of compressions (or refinements) over the blocks still
below the threshold, then one batched round of judgements of what they produced. With
`max_iterations=2`: compress -> judge -> refine (blocks under the threshold) -> judge. A
trace therefore costs at most `2 * max_iterations` round trips, whatever its block count.

Context: a compression sees the problem and the end of the previous block (in the first round
no memento exists yet: they are all written at once); a refinement and a judgement see the
problem and the preceding blocks' current mementos, i.e. what the model will really have in
context when it reads the block's memento. The final memento of a block is its best-judged
one (a later one on ties): a refinement that made things worse is not kept.

Length: the compressor is asked for about `target_ratio` (10%) of the block's tokens and at
most `max_ratio` (20%); the answer model caps the memento at `cap_ratio` (30%) of the block's
characters, so a rambling model is stopped by the grammar, and the judge and the quality filter
deal with the rest.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, field_validator

from memento_sglang.data.assemble import RESERVED as ASSEMBLY_RESERVED
from memento_sglang.data.llm import Ask, CallStats, Prompt, StructuredLLM, require

__all__ = [
    "BlockSummary",
    "Iteration",
    "SummarizeSettings",
    "Verdict",
    "compress_prompt",
    "judge_prompt",
    "memento_model",
    "needs_refinement",
    "refine_prompt",
    "summarize_blocks",
    "to_ascii",
    "verdict_model",
]

#: a memento must never contain these: they would tokenize as structure
RESERVED = ASSEMBLY_RESERVED  # strings a memento may not hold (they would tokenize as structure)
#: characters of the previous block shown as context to a first compression
PREVIOUS_TAIL_CHARS = 1200


@dataclass(frozen=True)
class SummarizeSettings:
    threshold: float = 8.0
    max_iterations: int = 2
    target_ratio: float = 0.10
    max_ratio: float = 0.20
    #: the answer model's hard cap, as a share of the block's characters
    cap_ratio: float = 0.30
    min_memento_chars: int = 120
    feedback_chars: int = 600
    missing_items: int = 5
    missing_item_chars: int = 160

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")


# -------------------------------------------------------------------- answer models


class _MementoBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memento: str

    @field_validator("memento")
    @classmethod
    def _usable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the memento is empty")
        found = [t for t in RESERVED if t in value]
        if found:
            raise ValueError(f"the memento contains the delimiter string(s) {found}")
        return value


@cache
def memento_model(max_chars: int) -> type[_MementoBase]:
    """`{"memento": str}` of at most `max_chars` characters (bucketed by the caller: one
    compiled grammar serves many blocks)."""
    return create_model(
        f"Memento{max_chars}",
        __base__=_MementoBase,
        memento=(Annotated[str, Field(min_length=1, max_length=max_chars)], ...),
    )


def memento_chars(block: str, settings: SummarizeSettings) -> int:
    """The character cap of a block's memento, rounded up to a multiple of 64."""
    cap = max(settings.min_memento_chars, int(len(block) * settings.cap_ratio))
    return -(-cap // 64) * 64


class Verdict(BaseModel):
    """The judge's verdict; sub-scores first so the model rates the parts before the total."""

    model_config = ConfigDict(extra="forbid")

    formulas: Literal[0, 1, 2, 3]
    values: Literal[0, 1, 2]
    method: Literal[0, 1, 2]
    validation: Literal[0, 1]
    correctness: Literal[0, 1]
    result_first: Literal[0, 1]
    score: Literal[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    missing: list[str]
    feedback: str

    def subscores(self) -> dict[str, int]:
        return {
            k: getattr(self, k)
            for k in ("formulas", "values", "method", "validation", "correctness", "result_first")
        }


@cache
def verdict_model(missing_items: int, missing_item_chars: int, feedback_chars: int) -> type[Verdict]:
    """`Verdict` with length caps on its lists and strings, so a bad model cannot ramble."""
    item = Annotated[str, StringConstraints(max_length=missing_item_chars)]
    return create_model(
        f"Verdict{missing_items}x{missing_item_chars}_{feedback_chars}",
        __base__=Verdict,
        missing=(Annotated[list[item], Field(max_length=missing_items)], ...),
        feedback=(Annotated[str, Field(max_length=feedback_chars)], ...),
    )


# -------------------------------------------------------------------------- prompts

COMPRESSOR_SYSTEM = """\
You compress one chunk of a step-by-step solution into a memento: a short note that will \
replace the chunk. Whoever continues the solution sees the problem, the earlier mementos and \
this memento, never the chunk itself, so the memento must carry every result they still need.

Rules:
- Extract, do not invent: no new derivations, no corrections, nothing from later chunks.
- Record what changed: results found, equations set up, values computed, cases decided, \
checks passed or failed, and the method used. Leave out narration and restated facts.
- Put results first, then how they were obtained.
- Keep formulas and numbers exactly as written.
- Be terse: semicolons, "name: value" pairs. ASCII only (x_1, a^2, >=, sqrt(), pi), no markdown.
- Never refer to "the chunk", "this block" or "the text": state the content directly.

Answer with JSON only: {"memento": "..."}."""

JUDGE_SYSTEM = """\
You grade a memento: a short note that replaces one chunk of a step-by-step solution. A \
reader sees the problem, earlier mementos and this memento, never the chunk.

Rate it against the chunk:
- formulas (0-3): key formulas and equations kept verbatim, not paraphrased in words
- values (0-2): the numbers the chunk computed or relied on are present and exact
- method (0-2): the technique or approach used is named
- validation (0-1): checks done in the chunk and their outcome are recorded
- correctness (0-1): nothing contradicts the chunk; a result the chunk rejected is marked as such
- result_first (0-1): the outcome comes before the path to it
Then give an overall score 0-10: the sum of the above, minus 1 for anything not in the chunk, \
minus 1 for narration ("we then ..."), minus 1 for formulas spelled in words, minus 2 for a \
missing formula the next steps need, minus 1 for non-ASCII characters. Never below 0.

List what is missing (most important first) and give feedback: a few concrete, prioritised \
fixes. Answer with JSON only, in the field order of the schema."""


def _problem_section(problem: str | None) -> str:
    return f"PROBLEM:\n{problem.strip()}\n\n" if problem else ""


def _mementos_section(earlier: Sequence[str]) -> str:
    if not earlier:
        return "EARLIER MEMENTOS: (none, this is the first chunk)\n\n"
    lines = "\n".join(f"[{i + 1}] {m}" for i, m in enumerate(earlier))
    return f"EARLIER MEMENTOS:\n{lines}\n\n"


def _length_line(block_tokens: int, settings: SummarizeSettings) -> str:
    target = max(8, round(block_tokens * settings.target_ratio))
    cap = max(16, round(block_tokens * settings.max_ratio))
    return f"The chunk has {block_tokens} tokens: aim for about {target} tokens, never more than {cap}."


def compress_prompt(
    problem: str | None,
    previous_block: str | None,
    block: str,
    block_tokens: int,
    settings: SummarizeSettings,
) -> Prompt:
    context = ""
    if previous_block:
        tail = previous_block[-PREVIOUS_TAIL_CHARS:]
        cut = "..." if len(previous_block) > PREVIOUS_TAIL_CHARS else ""
        context = f"JUST BEFORE THE CHUNK (context only, do not summarise):\n{cut}{tail.strip()}\n\n"
    user = (
        _problem_section(problem)
        + context
        + f"CHUNK:\n{block.strip()}\n\n"
        + _length_line(block_tokens, settings)
    )
    return Prompt(COMPRESSOR_SYSTEM, user)


def refine_prompt(
    problem: str | None,
    earlier: Sequence[str],
    block: str,
    block_tokens: int,
    memento: str,
    verdict: Verdict,
    settings: SummarizeSettings,
) -> Prompt:
    missing = "\n".join(f"- {m}" for m in verdict.missing) or "- (nothing listed)"
    user = (
        _problem_section(problem)
        + _mementos_section(earlier)
        + f"CHUNK:\n{block.strip()}\n\n"
        + f"PREVIOUS MEMENTO (scored {verdict.score}/10):\n{memento}\n\n"
        + f"MISSING:\n{missing}\n\nREVIEWER FEEDBACK:\n{verdict.feedback.strip() or '(none)'}\n\n"
        + "Write an improved memento that fixes these points and keeps what was right. "
        + _length_line(block_tokens, settings)
    )
    return Prompt(COMPRESSOR_SYSTEM, user)


def judge_prompt(problem: str | None, earlier: Sequence[str], block: str, memento: str) -> Prompt:
    user = (
        _problem_section(problem)
        + _mementos_section(earlier)
        + f"CHUNK:\n{block.strip()}\n\nMEMENTO TO GRADE:\n{memento}"
    )
    return Prompt(JUDGE_SYSTEM, user)


# ------------------------------------------------------------------- text hygiene

_ASCII = {
    "\u2264": "<=",
    "\u2265": ">=",
    "\u2260": "!=",
    "\u2248": "~=",
    "\u00d7": "*",
    "\u00b7": "*",
    "\u22c5": "*",
    "\u00f7": "/",
    "\u2212": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u2192": "->",
    "\u21d2": "=>",
    "\u21d4": "<=>",
    "\u221e": "inf",
    "\u03c0": "pi",
    "\u221a": "sqrt",
    "\u00b2": "^2",
    "\u00b3": "^3",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2026": "...",
    "\u00b1": "+-",
    "\u2208": " in ",
    "\u2211": "sum",
    "\u0394": "Delta",
    "\u03b8": "theta",
}


def to_ascii(text: str) -> str:
    """Common math and typography symbols as ASCII; other characters decomposed (e -> e) or kept
    (the judge penalises what is left, and the example keeps it)."""
    out = []
    for ch in text:
        if ord(ch) < 128:
            out.append(ch)
        elif ch in _ASCII:
            out.append(_ASCII[ch])
        else:
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(plain or ch)
    return "".join(out).strip()


# ------------------------------------------------------------------------ metadata


class Iteration(BaseModel):
    """One round of a block: the memento written (compressed or refined) and its verdict."""

    iteration: int
    kind: Literal["compress", "refine"]
    memento: str
    memento_tokens: int
    compression_ratio: float
    score: int
    subscores: dict[str, int]
    missing: list[str]
    feedback: str
    non_ascii: int


class BlockSummary(BaseModel):
    """A block's rounds and the memento chosen from them."""

    block_index: int
    block_tokens: int
    iterations: list[Iteration] = []
    final_iteration: int = 0
    memento: str = ""
    score: int = 0
    memento_tokens: int = 0
    compression_ratio: float = 0.0

    def choose(self) -> None:
        """Keep the best-judged memento (the latest among equals)."""
        best = max(self.iterations, key=lambda it: (it.score, it.iteration))
        self.final_iteration = best.iteration
        self.memento = best.memento
        self.score = best.score
        self.memento_tokens = best.memento_tokens
        self.compression_ratio = best.compression_ratio


def needs_refinement(summaries: Sequence[BlockSummary], threshold: float) -> list[int]:
    """Blocks whose latest memento scored below `threshold`."""
    return [s.block_index for s in summaries if s.iterations and s.iterations[-1].score < threshold]


# ------------------------------------------------------------------------ the loop


def summarize_blocks(
    llm: StructuredLLM,
    *,
    problem: str | None,
    blocks: Sequence[str],
    count_tokens: Callable[[str], int],
    settings: SummarizeSettings | None = None,
    stats: CallStats | None = None,
) -> list[BlockSummary]:
    """A judged memento for every block; raises `LLMFailure` when a call never validates."""
    settings = settings or SummarizeSettings()
    verdict_answer = verdict_model(
        settings.missing_items, settings.missing_item_chars, settings.feedback_chars
    )
    summaries = [BlockSummary(block_index=i, block_tokens=count_tokens(b)) for i, b in enumerate(blocks)]
    current: list[str] = ["" for _ in blocks]
    verdicts: list[Verdict | None] = [None for _ in blocks]
    todo = list(range(len(blocks)))
    for iteration in range(1, settings.max_iterations + 1):
        if not todo:
            break
        kind: Literal["compress", "refine"] = "compress" if iteration == 1 else "refine"
        asks = []
        for i in todo:
            answer = memento_model(memento_chars(blocks[i], settings))
            tokens = summaries[i].block_tokens
            if kind == "compress":
                previous = blocks[i - 1] if i else None
                prompt = compress_prompt(problem, previous, blocks[i], tokens, settings)
            else:
                verdict = verdicts[i]
                assert verdict is not None  # a refined block was judged in the previous round
                prompt = refine_prompt(problem, current[:i], blocks[i], tokens, current[i], verdict, settings)
            asks.append(Ask(prompt, answer))
        written = require(llm.ask(asks, stage=kind, stats=stats), f"{kind} (iteration {iteration})")
        raw = {i: w.memento for i, w in zip(todo, written, strict=True)}
        for i in todo:
            current[i] = to_ascii(raw[i]) or raw[i].strip()
        judged = require(
            llm.ask(
                [
                    Ask(judge_prompt(problem, current[:i], blocks[i], current[i]), verdict_answer)
                    for i in todo
                ],
                stage="judge",
                stats=stats,
            ),
            f"judge (iteration {iteration})",
        )
        for i, verdict in zip(todo, judged, strict=True):
            verdicts[i] = verdict
            tokens = count_tokens(current[i])
            block_tokens = max(summaries[i].block_tokens, 1)
            summaries[i].iterations.append(
                Iteration(
                    iteration=iteration,
                    kind=kind,
                    memento=current[i],
                    memento_tokens=tokens,
                    compression_ratio=tokens / block_tokens,
                    score=verdict.score,
                    subscores=verdict.subscores(),
                    missing=list(verdict.missing),
                    feedback=verdict.feedback,
                    non_ascii=sum(1 for ch in current[i] if ord(ch) >= 128),
                )
            )
        todo = needs_refinement([summaries[i] for i in todo], settings.threshold)
    for summary in summaries:
        summary.choose()
    return summaries
