"""How much KV a Memento request can still add: the scheduler's admission estimate.

SGLang budgets a request's future KV as `min(max_new_tokens - output, CLIP)`
tokens, as if every generated token stayed in the cache. A Memento request keeps
only its mementos: each *cycle* (the text before a block, the block, its memento)
adds its full length while it is open and leaves only the memento behind when it
closes. So the live KV a request can still add over its `remaining` tokens is
bounded by

    open + kept_share * (remaining - open)

where `open` is what the cycles that are still open can add (the rest of the
current cycle, plus `keep_last_n_blocks` whole cycles that stay visible) and
`kept_share` the share of a cycle that stays in the row. Both come from the cycles
closed on this server (`CycleStats`): a high percentile of cycle length and the
largest kept share seen. The bound holds for any trace whose cycles respect them
(see `tests/unit/test_growth.py`). Pure: no SGLang, no torch.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CycleBounds:
    """What the server has learned about cycles: their length, and the share they keep."""

    cycle_tokens: int
    kept_share: float


@dataclass(frozen=True, slots=True)
class Growth:
    """A request's future KV growth: `total` tokens, of which `open` belong to cycles
    already under way (never discounted: they will be written unless the request stops)."""

    open: int
    total: int


class CycleStats:
    """The last `window` cycles closed on this server; `bounds()` is None while cold.

    `quantile` of cycle lengths bounds a cycle; the kept share is the same quantile
    of per-cycle shares, so a few long mementos do not hide behind many short ones.
    """

    def __init__(self, window: int = 512, min_cycles: int = 8, quantile: float = 0.95) -> None:
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self._lengths: deque[int] = deque(maxlen=window)
        self._kept_shares: deque[float] = deque(maxlen=window)
        self._min_cycles = min_cycles
        self._quantile = quantile

    def observe(self, cycle_tokens: int, evicted_tokens: int) -> None:
        if cycle_tokens <= 0 or not 0 <= evicted_tokens <= cycle_tokens:
            return  # malformed structure: the tracker already recorded an anomaly
        self._lengths.append(cycle_tokens)
        self._kept_shares.append((cycle_tokens - evicted_tokens) / cycle_tokens)

    def __len__(self) -> int:
        return len(self._lengths)

    def bounds(self) -> CycleBounds | None:
        if len(self._lengths) < self._min_cycles:
            return None
        kept = sum(share * length for share, length in zip(self._kept_shares, self._lengths, strict=True))
        return CycleBounds(
            cycle_tokens=_quantile(self._lengths, self._quantile),
            kept_share=kept / sum(self._lengths),
        )


def _quantile(values: deque, q: float):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def memento_growth(remaining: int, open_cycle_tokens: int, keep_last_n_blocks: int,
                   bounds: CycleBounds) -> Growth:  # fmt: skip
    """The most live KV a request adds over its next `remaining` tokens.

    `open_cycle_tokens` is how far the current cycle has come. While it and the
    `keep_last_n_blocks` cycles after it are open, every token stays; after that,
    each cycle leaves at most `kept_share` of itself.
    """
    if remaining <= 0:
        return Growth(0, 0)
    open_part = max(0, bounds.cycle_tokens - open_cycle_tokens)
    open_part = min(remaining, open_part + max(0, keep_last_n_blocks) * bounds.cycle_tokens)
    total = open_part + math.ceil(bounds.kept_share * (remaining - open_part))
    return Growth(open_part, min(remaining, total))
