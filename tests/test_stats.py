"""Bootstrap intervals against cases computed independently."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from app.stats import bootstrap_ci, paired_bootstrap_ci


def test_interval_matches_the_exact_bootstrap_distribution_of_a_small_case():
    # 4 problems scored 0, 0, 1, 1: the exact bootstrap distribution of the mean enumerates all 4^4 resamples.
    values = [0.0, 0.0, 1.0, 1.0]
    means = sorted(sum(values[i] for i in idx) / 4 for idx in itertools.product(range(4), repeat=4))
    exact_low = means[int(0.025 * len(means))]
    exact_high = means[math.ceil(0.975 * len(means)) - 1]
    ci = bootstrap_ci(values, resamples=200_000, seed=1)
    assert ci.estimate == 0.5 and ci.n == 4
    assert ci.low == pytest.approx(exact_low, abs=1e-9) and ci.high == pytest.approx(exact_high, abs=1e-9)


def test_interval_width_follows_the_normal_approximation_for_a_large_sample():
    rng = np.random.default_rng(7)
    values = (rng.random(500) < 0.4).astype(float)  # 500 problems, as MBPP test
    ci = bootstrap_ci(values, seed=3)
    se = math.sqrt(values.mean() * (1 - values.mean()) / values.size)
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert ci.low < ci.estimate < ci.high
    assert bootstrap_ci(values, seed=3) == ci  # same seed, same interval


def test_paired_interval_uses_only_shared_problems_and_is_tighter_than_unpaired():
    rng = np.random.default_rng(11)
    base = rng.random(300)
    a = {i: float(base[i] > 0.5) for i in range(300)}
    b = {i: float(base[i] > 0.55) for i in range(300)}  # b solves a subset of a's problems
    b[999] = 1.0  # a problem a was never evaluated on: ignored
    diff = paired_bootstrap_ci(a, b, seed=0)
    expected = np.mean([a[i] - b[i] for i in range(300)])
    assert diff.n == 300 and diff.estimate == pytest.approx(expected)
    assert diff.low >= 0.0  # a is never worse on any problem
    separate = bootstrap_ci(list(a.values())), bootstrap_ci([b[i] for i in range(300)])
    assert diff.high - diff.low < (separate[0].high - separate[0].low)


def test_bad_arguments_and_empty_input():
    with pytest.raises(ValueError, match="confidence level"):
        bootstrap_ci([1.0], level=1.5)
    empty = bootstrap_ci([])
    assert empty.n == 0 and math.isnan(empty.estimate)
