"""Assembly: segmented blocks + their mementos -> one Memento SFT example, checked.

The paper describes this step (A.2.1, §3) but ships no code for it. The assistant turn is
`<think>{prefix}` + per block `<|block_start|>{block}<|block_end|><|summary_start|>{memento}
<|summary_end|>` + `</think>{answer}`, rendered by the model's chat template and tokenized
with its tokenizer. A Memento model only works if each delimiter is a single special id, so
an example is built only once its ids are proven to read back into exactly the blocks and
mementos that went in (`MementoTrace.from_token_ids`, the front end's strict parser).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
from memento_sglang.frontend.trace import MalformedTrace, MementoTrace

__all__ = ["MementoExample", "QualityFilter", "assemble", "assistant_text"]

#: strings no text of the assistant turn may contain: they would tokenize to structure
RESERVED = MEMENTO_TOKENS + CHATML_TOKENS


class MementoExample(BaseModel):
    """One SFT example: the assistant text, its tokenized conversation, and statistics.

    `prompt_ids + completion_ids` is the chat-templated conversation (user = problem,
    assistant = `text`); the loss goes on `completion_ids`. Token counts are those of the
    model's tokenizer, between the delimiters, as they sit in `completion_ids`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    problem: str | None
    #: `MementoTrace.from_text` reads it back when the think prefix is whitespace (the strict
    #: parser takes no text before the first block; the ids are checked without it)
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    num_blocks: int
    block_tokens: list[int]
    memento_tokens: list[int]
    #: sum of memento tokens / sum of block tokens (0.0 without blocks)
    compression_ratio: float
    #: the judge's final score of each memento (one per block), when judged
    judge_scores: list[float] | None = None


def assistant_text(think_prefix: str, blocks: Sequence[str], mementos: Sequence[str], answer: str) -> str:
    """The assistant turn as the model writes it."""
    body = "".join(
        f"{BLOCK_START}{b}{BLOCK_END}{SUMMARY_START}{m}{SUMMARY_END}"
        for b, m in zip(blocks, mementos, strict=True)
    )
    return f"{THINK}{think_prefix}{body}{END_THINK}{answer}"


def assemble(
    *,
    task_id: str,
    problem: str | None,
    think_prefix: str,
    blocks: Sequence[str],
    mementos: Sequence[str],
    answer: str,
    tokenizer: Any,
    judge_scores: Sequence[float] | None = None,
) -> MementoExample:
    """Build and verify one example; raise `ValueError` naming what is wrong.

    `think_prefix`: text inside `<think>` before the first block (usually empty), kept as is.
    `problem=None` renders an empty user turn: the chat template needs one to open the
    assistant turn the tracker looks for.
    """
    _check_inputs(problem, think_prefix, blocks, mementos, answer, judge_scores)
    text = assistant_text(think_prefix, blocks, mementos, answer)
    prompt_ids, completion_ids = _conversation_ids(tokenizer, problem, text)
    delimiter_ids = _delimiter_ids(tokenizer)
    positions = _verify(
        completion_ids, delimiter_ids, _decoder(tokenizer), think_prefix, blocks, mementos, answer
    )
    block_tokens = [end - start - 1 for start, end, _, _ in positions]
    memento_tokens = [end - start - 1 for _, _, start, end in positions]
    return MementoExample(
        task_id=task_id,
        problem=problem,
        text=text,
        prompt_ids=prompt_ids,
        completion_ids=completion_ids,
        num_blocks=len(blocks),
        block_tokens=block_tokens,
        memento_tokens=memento_tokens,
        compression_ratio=sum(memento_tokens) / sum(block_tokens) if block_tokens else 0.0,
        judge_scores=None if judge_scores is None else [float(s) for s in judge_scores],
    )


# ---------------------------------------------------------------------- input checks


def _check_inputs(
    problem: str | None,
    think_prefix: str,
    blocks: Sequence[str],
    mementos: Sequence[str],
    answer: str,
    judge_scores: Sequence[float] | None,
) -> None:
    if isinstance(blocks, str) or isinstance(mementos, str):
        raise ValueError("blocks and mementos must be sequences of strings, not one string")
    if len(blocks) != len(mementos):
        raise ValueError(f"{len(blocks)} blocks but {len(mementos)} mementos: each block needs one memento")
    if judge_scores is not None and len(judge_scores) != len(blocks):
        raise ValueError(f"{len(judge_scores)} judge scores for {len(blocks)} blocks")
    for i, (block, memento) in enumerate(zip(blocks, mementos, strict=True)):
        if not block.strip():
            raise ValueError(f"block {i} is empty")
        if not memento.strip():
            raise ValueError(f"memento {i} is empty: its block would leave the context with nothing kept")
        _refuse_reserved(f"block {i}", block)
        _refuse_reserved(f"memento {i}", memento)
    _refuse_reserved("think_prefix", think_prefix)
    _refuse_reserved("answer", answer)
    if problem is not None:  # a delimiter in the prompt would open structure the export cannot track
        _refuse_reserved("problem", problem)


def _refuse_reserved(where: str, text: str, reserved: Sequence[str] = RESERVED) -> None:
    found = [tok for tok in reserved if tok in text]
    if found:
        raise ValueError(f"{where} contains the delimiter string(s) {found}: it would tokenize as structure")


# ------------------------------------------------------------------------ tokenizing


def _conversation_ids(tokenizer: Any, problem: str | None, text: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of the chat-templated conversation.

    The prompt is the template's generation prompt; the completion is what the full
    conversation adds to it (the assistant turn and its end-of-turn tokens).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: the prompt/completion split needs one")
    user = [{"role": "user", "content": problem or ""}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": text}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the conversation as generation prompt + answer")
    return _encode(tokenizer, prompt), _encode(tokenizer, full[len(prompt) :])


def _encode(tokenizer: Any, text: str) -> list[int]:
    # the rendered template already holds any BOS: no special tokens added
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _delimiter_ids(tokenizer: Any) -> dict[str, int]:
    """Each Memento delimiter's single id; raise when the tokenizer splits one."""
    out: dict[str, int] = {}
    for delimiter in MEMENTO_TOKENS:
        ids = _encode(tokenizer, delimiter)
        if len(ids) != 1:
            raise ValueError(
                f"{delimiter} is not a single token of this tokenizer ({ids}): add the Memento "
                "special tokens to the tokenizer (and resize the model's embeddings) first"
            )
        out[delimiter] = ids[0]
    return out


# ---------------------------------------------------------------------- verification


def _verify(
    ids: list[int],
    delimiter_ids: dict[str, int],
    decode: Callable[[list[int]], str],
    think_prefix: str,
    blocks: Sequence[str],
    mementos: Sequence[str],
    answer: str,
) -> list[tuple[int, int, int, int]]:
    """Check the completion reads back into the inputs; return each block's
    (block_start, block_end, summary_start, summary_end) index in `ids`."""
    at = {d: [i for i, t in enumerate(ids) if t == tid] for d, tid in delimiter_ids.items()}
    expected = {THINK: 1, END_THINK: 1} | {
        d: len(blocks) for d in (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)
    }
    counts = {d: len(at[d]) for d in MEMENTO_TOKENS}
    if counts != expected:
        raise ValueError(f"the completion holds delimiter ids {counts}, expected {expected}")
    think, first = at[THINK][0], (at[BLOCK_START] or at[END_THINK])[0]
    if decode(ids[think + 1 : first]).strip() != think_prefix.strip():
        raise ValueError(f"the think prefix reads back as {decode(ids[think + 1 : first])!r}")
    try:  # the strict parser takes no text before the first block: the prefix is checked above
        trace = MementoTrace.from_token_ids(ids[: think + 1] + ids[first:], delimiter_ids, decode)
    except MalformedTrace as exc:
        raise ValueError(f"the completion ids are not a well-formed Memento trace: {exc}") from exc
    if [b.text for b in trace.blocks] != list(blocks) or trace.mementos != list(mementos):
        raise ValueError("the completion ids do not read back into the same blocks and mementos")
    if answer.strip() not in trace.answer:  # the template may add whitespace and end-of-turn tokens
        raise ValueError(f"the answer reads back as {trace.answer!r}")
    return list(zip(at[BLOCK_START], at[BLOCK_END], at[SUMMARY_START], at[SUMMARY_END], strict=True))


# --------------------------------------------------------------------------- filter


class QualityFilter(BaseModel):
    """Which assembled examples go to training (the paper's ~320K -> 228K step, whose code
    is not released). `None` turns a criterion off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: every memento's judge score must reach this (the pipeline's refine threshold)
    min_judge_score: float | None = 8.0
    max_compression_ratio: float | None = 0.5
    min_blocks: int = Field(default=1, ge=0)
    max_blocks: int | None = Field(default=None, ge=0)

    def reasons(self, example: MementoExample) -> list[str]:
        """Why `example` is rejected; empty when it is kept."""
        out = []
        if example.num_blocks < self.min_blocks:
            out.append(f"{example.num_blocks} blocks < min_blocks {self.min_blocks}")
        if self.max_blocks is not None and example.num_blocks > self.max_blocks:
            out.append(f"{example.num_blocks} blocks > max_blocks {self.max_blocks}")
        ratio = self.max_compression_ratio
        if ratio is not None and example.compression_ratio > ratio:
            out.append(f"compression ratio {example.compression_ratio:.3f} > {ratio}")
        if self.min_judge_score is not None:
            out.extend(self._judge_reasons(example.judge_scores))
        return out

    def keeps(self, example: MementoExample) -> bool:
        return not self.reasons(example)

    def _judge_reasons(self, scores: list[float] | None) -> list[str]:
        if scores is None:
            return ["no judge scores (set min_judge_score=None to keep unjudged examples)"]
        low = [(i, s) for i, s in enumerate(scores) if s < (self.min_judge_score or 0.0)]
        return [f"memento {i} judge score {s} < {self.min_judge_score}" for i, s in low]
