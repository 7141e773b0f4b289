"""A synthetic vocabulary for tracker tests: short symbols instead of real token ids."""

from __future__ import annotations

from memento_sglang.config import MementoConfig, MementoSpec

IM, ASSISTANT, USER, BS, BE, SS, SE, TE, W = 1, 2, 3, 10, 11, 12, 13, 14, 50
VOCAB = {
    "<|im_start|>": IM,
    "assistant": ASSISTANT,
    "user": USER,
    "<|block_start|>": BS,
    "<|block_end|>": BE,
    "<|summary_start|>": SS,
    "<|summary_end|>": SE,
    "</think>": TE,
}
SYMBOLS = {"[": [BS], "]": [BE], "(": [SS], ")": [SE], "T": [TE], "A": [IM, ASSISTANT]}


def tokens(text: str) -> list[int]:
    """`"A [ w ] ( s ) T x"` -> ids; unknown words map to ordinary ids >= W."""
    out: list[int] = []
    for sym in text.split():
        out.extend(SYMBOLS.get(sym, [W + (len(sym) if sym not in ("w", "s") else 0)]))
    return out


def spec(**options) -> MementoSpec:
    cfg = MementoConfig.parse({"enable": True, **options})
    return cfg.resolve(VOCAB, vocab_size=100)
