"""A synthetic vocabulary for tracker tests: short symbols instead of real token ids."""

from __future__ import annotations

from hypothesis import strategies as st

from memento_sglang.config import MementoConfig, MementoSpec
from memento_sglang.tracker import ClosedBlock, Eviction

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


def evictions(spans: list[tuple[int, int, int]]) -> list[Eviction]:
    """`(start, end, trigger)` spans as evictions (masks read nothing else)."""
    block = ClosedBlock(0, 0, 0, 0, 0)
    return [Eviction(block, s, e, t) for s, e, t in spans]


@st.composite
def eviction_rows(draw) -> tuple[list[Eviction], int, int]:
    """`(evictions, kv_len, prefix_len)`: disjoint spans in a row, each hidden after a
    trigger at or past its end, and a prefix (earlier chunks) before the extend."""
    spans, at = [], 0
    for _ in range(draw(st.integers(0, 4))):
        start = at + draw(st.integers(0, 5))
        end = start + draw(st.integers(1, 6))
        trigger = end + draw(st.integers(0, 3))
        spans.append((start, end, trigger))
        at = trigger + 1
    kv_len = at + draw(st.integers(1, 12))
    return evictions(spans), kv_len, draw(st.integers(0, kv_len - 1))
