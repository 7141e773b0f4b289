"""Accuracy statistics: pass@k, bootstrap confidence intervals, paired differences.

Problems are the unit of resampling (samples of one problem are not independent).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of `k` samples drawn from `n` (of which `c` are
    correct) is correct: the unbiased estimator `1 - C(n-c, k) / C(n, k)`."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass(frozen=True)
class Estimate:
    """A mean over problems with a bootstrap confidence interval."""

    mean: float
    low: float
    high: float


def bootstrap(
    values: Sequence[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Estimate:
    """The mean of per-problem `values` and its percentile bootstrap interval."""
    if not values:
        return Estimate(math.nan, math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2
    low = means[int(tail * (resamples - 1))]
    high = means[math.ceil((1.0 - tail) * (resamples - 1))]
    return Estimate(sum(values) / n, low, high)


def paired_difference(a: dict[str, float], b: dict[str, float], **kwargs) -> Estimate:
    """Mean of `a - b` over the problems both have, with its bootstrap interval."""
    shared = sorted(a.keys() & b.keys())
    return bootstrap([a[p] - b[p] for p in shared], **kwargs)
