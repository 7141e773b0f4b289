"""`MementoTrace`: a Memento generation as data (blocks, mementos, answer, stats).

Parsed from the generated text (delimiters as text, i.e. `skip_special_tokens:
false`) or from the token ids (each delimiter one special id). Parsing is strict:
a malformed trace raises `MalformedTrace`, which names what is wrong and where,
instead of returning a half-read trace. Pure Python + pydantic, no SGLang.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from memento_sglang.constants import (
    BLOCK_END,
    BLOCK_START,
    END_THINK,
    MEMENTO_TOKENS,
    SUMMARY_END,
    SUMMARY_START,
    THINK,
)
from memento_sglang.sequence import MementoStats
from memento_sglang.text import closed_mementos

__all__ = ["MalformedTrace", "MementoBlock", "MementoTrace", "closed_mementos"]

_SPLIT = re.compile("(" + "|".join(re.escape(d) for d in MEMENTO_TOKENS) + ")")
# what may follow each state: the grammar of `<think> (block memento)* </think> answer`
_NEXT = {
    "start": (THINK, BLOCK_START, END_THINK),
    THINK: (BLOCK_START, END_THINK),
    BLOCK_START: (BLOCK_END,),
    BLOCK_END: (SUMMARY_START,),
    SUMMARY_START: (SUMMARY_END,),
    SUMMARY_END: (BLOCK_START, END_THINK),
    END_THINK: (),
}
_TEXT_ALLOWED = {BLOCK_START, SUMMARY_START, END_THINK}  # where free text belongs


class MalformedTrace(ValueError):
    """The text or ids do not follow `<think> (block memento)* </think> answer`."""


class MementoBlock(BaseModel):
    """One reasoning block and the memento that summarises it."""

    model_config = ConfigDict(frozen=True)

    text: str
    memento: str


class MementoTrace(BaseModel):
    """A whole Memento generation; `stats` is the server's `meta_info["memento"]` when known."""

    model_config = ConfigDict(frozen=True)

    blocks: tuple[MementoBlock, ...]
    answer: str
    stats: MementoStats | None = None

    @property
    def mementos(self) -> list[str]:
        return [b.memento for b in self.blocks]

    def to_text(self, *, think: bool = True) -> str:
        """The trace as the model writes it (the inverse of `from_text`)."""
        body = "".join(
            f"{BLOCK_START}{b.text}{BLOCK_END}{SUMMARY_START}{b.memento}{SUMMARY_END}" for b in self.blocks
        )
        return f"{THINK if think else ''}{body}{END_THINK}{self.answer}"

    @classmethod
    def from_text(cls, text: str, *, stats: dict | MementoStats | None = None) -> MementoTrace:
        """Parse generated text; `<think>` may be absent (the prompt opened it)."""
        pieces = [p for p in _SPLIT.split(text) if p != ""]
        return cls._parse([(p, p if p in MEMENTO_TOKENS else None) for p in pieces], stats)

    @classmethod
    def from_token_ids(
        cls,
        ids: Sequence[int],
        delimiter_ids: dict[str, int],
        decode: Callable[[list[int]], str],
        *,
        stats: dict | MementoStats | None = None,
    ) -> MementoTrace:
        """Parse output ids: each delimiter must be its single id (`delimiter_ids` maps
        the six delimiter strings to ids); `decode` turns the ids between them into text."""
        missing = set(MEMENTO_TOKENS) - set(delimiter_ids)
        if missing:
            raise ValueError(f"delimiter_ids lacks {sorted(missing)}")
        by_id = {i: d for d, i in delimiter_ids.items() if d in MEMENTO_TOKENS}
        pieces: list[tuple[str, str | None]] = []
        run: list[int] = []
        for tid in ids:
            if tid in by_id:
                if run:
                    pieces.append((decode(run), None))
                    run = []
                pieces.append((by_id[tid], by_id[tid]))
            else:
                run.append(tid)
        if run:
            pieces.append((decode(run), None))
        for text, kind in pieces:
            if kind is None and _SPLIT.search(text):
                raise MalformedTrace(f"a delimiter spelled with ordinary tokens: {text!r}")
        return cls._parse(pieces, stats)

    @classmethod
    def _parse(cls, pieces: list[tuple[str, str | None]], stats: dict | MementoStats | None) -> MementoTrace:
        state, answer = "start", ""
        blocks: list[MementoBlock] = []
        texts: dict[str, str] = {}
        for n, (text, delimiter) in enumerate(pieces):
            where = f"piece {n}"
            if delimiter is None:
                if state == END_THINK:
                    answer += text
                elif state in _TEXT_ALLOWED:
                    texts[state] = texts.get(state, "") + text
                elif text.strip():
                    raise MalformedTrace(f"{where}: text {text[:40]!r} outside a block or memento")
                continue
            if delimiter not in _NEXT[state]:
                expected = " or ".join(_NEXT[state]) or "nothing after the answer"
                raise MalformedTrace(f"{where}: {delimiter} where {expected} was expected")
            if delimiter == SUMMARY_END:
                blocks.append(
                    MementoBlock(text=texts.pop(BLOCK_START, ""), memento=texts.pop(SUMMARY_START, ""))
                )
            state = delimiter
        if state != END_THINK:
            raise MalformedTrace(f"the trace ends inside the reasoning (after {state!r}); no {END_THINK}")
        if isinstance(stats, dict):
            stats = MementoStats.model_validate(stats)
        return cls(blocks=tuple(blocks), answer=answer, stats=stats)
