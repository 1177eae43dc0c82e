"""Confidence intervals for accuracies over problems: the percentile bootstrap, alone and paired.

A benchmark accuracy is a mean over problems (each problem's own score is its share of solved chains, or 0/1 for
greedy), so the unit that is resampled is the problem: that is what would change if the benchmark were drawn
again. Two experiments evaluated on the same problems are compared on the per-problem differences, resampled
together, which is much tighter than two independent intervals. Fixed seeds: the same numbers give the same
interval every time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """``estimate`` with its ``level`` percentile-bootstrap interval ``[low, high]`` over ``n`` problems."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = DEFAULT_LEVEL

    def as_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n, "level": self.level}


def _check(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), not {level}")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(values: Sequence[float], *, level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> Interval:
    """The mean of ``values`` (one per problem) and its percentile-bootstrap interval."""
    _check(level, resamples)
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    low, high = _percentiles(x[idx].mean(axis=1), level)
    return Interval(float(x.mean()), low, high, int(x.size), level)


def bootstrap_cis(samples: Sequence[Sequence[float]], *, level: float = DEFAULT_LEVEL,
                  resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> list[Interval]:
    """``[bootstrap_ci(s) for s in samples]``, computed together: ``bootstrap_ci`` draws the same resampled
    indices for every sample of the same size, so they are drawn once per size, counted per resample, and the
    means of all samples of that size are one matrix product. The intervals equal ``bootstrap_ci``'s up to the
    rounding of the means (a report with a hundred cells takes a fraction of the time)."""
    _check(level, resamples)
    xs = [np.asarray(s, dtype=float) for s in samples]
    out: list[Interval | None] = [None] * len(xs)
    by_size: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        by_size.setdefault(int(x.size), []).append(i)
    for n, members in by_size.items():
        if n == 0:
            for i in members:
                out[i] = Interval(float("nan"), float("nan"), float("nan"), 0, level)
            continue
        idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # as bootstrap_ci draws them
        counts = np.bincount((idx + np.arange(resamples)[:, None] * n).ravel(), minlength=resamples * n)
        means = counts.reshape(resamples, n).astype(float) @ np.stack([xs[i] for i in members], axis=1) / n
        for j, i in enumerate(members):
            low, high = _percentiles(means[:, j], level)
            out[i] = Interval(float(xs[i].mean()), low, high, n, level)
    return out  # type: ignore[return-value]


def paired_bootstrap_ci(a: Mapping[object, float], b: Mapping[object, float], *, level: float = DEFAULT_LEVEL,
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """``mean(a) - mean(b)`` over the problems both have, with the interval of the paired differences
    (each resample draws problems, and a problem brings both of its scores)."""
    keys = sorted(set(a) & set(b), key=repr)
    diffs = [float(a[k]) - float(b[k]) for k in keys]
    return bootstrap_ci(diffs, level=level, resamples=resamples, seed=seed)
