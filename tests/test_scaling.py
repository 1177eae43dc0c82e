"""The Best-of-N scaling estimator against brute force: every n-subset of the stored candidates, picked by the
real selectors of app.selection."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest

from app.scaling import best_of_n, pick_weights, preference, scaling_curve
from app.selection import select


@dataclass(frozen=True)
class Cand:
    sample_index: int
    public_passed: bool
    private_passed: bool
    score: float


def _outcome(c: Cand) -> float:
    return float(c.public_passed and c.private_passed)


def _brute(cands: list[Cand], selector: str, n: int, *, all_orders: bool) -> float:
    """Mean outcome of ``select`` over every n-subset (and, with ``all_orders``, over every assignment of
    sample indexes to the candidates: the tie-break of independent draws)."""
    orders = itertools.permutations(range(len(cands))) if all_orders else [tuple(range(len(cands)))]
    total, count = Fraction(0), 0
    for order in orders:
        relabeled = [Cand(order[i], c.public_passed, c.private_passed, c.score) for i, c in enumerate(cands)]
        for subset in itertools.combinations(relabeled, n):
            pick = select(selector, list(subset), seed=0) if selector != "random" else None
            total += Fraction(_outcome(pick)) if pick is not None else Fraction(
                sum(int(_outcome(c)) for c in subset), n)
            count += 1
    return float(total / count)


def _keys(cands, selector):
    return [preference(selector, c.public_passed, c.private_passed, c.score) for c in cands]


def test_weights_are_the_best_of_subset_probabilities():
    w = pick_weights(6, 6)
    assert np.allclose(w.sum(axis=1), 1.0)
    # n = 1: uniform; n = m: always the first
    assert np.allclose(w[0], 1 / 6) and w[5, 0] == 1.0 and w[5, 1:].sum() == 0.0
    # position j of 6 is the best of a 3-subset iff the other 2 come from the 6 - j behind it
    assert w[2, 1] == pytest.approx(math.comb(4, 2) / math.comb(6, 3))
    with pytest.raises(ValueError):
        pick_weights(3, 4)


@pytest.mark.parametrize("selector", ["pt+lv", "lv", "oracle"])
def test_distinct_keys_equal_the_real_selector_over_every_subset(selector):
    rng = np.random.default_rng(5)
    for _ in range(20):
        m = int(rng.integers(1, 8))
        # distinct scores; public/private drawn independently (public-only and private-only passes included)
        scores = rng.permutation(m) + rng.random(m) * 0.1
        cands = [Cand(i, bool(rng.random() < 0.5), bool(rng.random() < 0.5), float(scores[i])) for i in range(m)]
        keys = _keys(cands, selector)
        if selector == "oracle" and len(set(keys)) < len(keys):
            continue  # oracle keys tie by construction: covered below
        est = best_of_n(keys, [_outcome(c) for c in cands])
        for n in range(1, m + 1):
            assert est[n - 1] == pytest.approx(_brute(cands, selector, n, all_orders=False)), (selector, n)


@pytest.mark.parametrize("selector", ["pt", "pt+lv", "lv", "oracle", "random"])
def test_ties_equal_the_real_selector_averaged_over_sample_orders(selector):
    # public passes tie under pt; two equal scores tie under lv/pt+lv; everything ties under random
    cands = [Cand(0, True, True, 0.5), Cand(1, True, False, 0.5), Cand(2, False, False, 2.0),
             Cand(3, True, True, -1.0), Cand(4, False, True, 0.5), Cand(5, True, False, 0.9)]
    est = best_of_n(_keys(cands, selector), [_outcome(c) for c in cands])
    for n in range(1, len(cands) + 1):
        assert est[n - 1] == pytest.approx(_brute(cands, selector, n, all_orders=True)), (selector, n)
    # n = 1 is the mean outcome whatever the selector; random stays there for every n
    assert est[0] == pytest.approx(2 / 6)
    if selector == "random":
        assert np.allclose(est, 2 / 6)


def test_a_hand_case():
    # 4 candidates, pt+lv: public-pass scores 1.0 (wrong) and 0.2 (right); non-passing 3.0 and -1.0 (both wrong).
    # Ranking: [1.0 wrong, 0.2 right, 3.0 wrong, -1.0 wrong]. n = 2: the right one is picked by the subsets
    # without the first but with it: C(2, 1) / C(4, 2) = 2/6.
    cands = [Cand(0, True, False, 1.0), Cand(1, True, True, 0.2), Cand(2, False, False, 3.0),
             Cand(3, False, False, -1.0)]
    est = best_of_n(_keys(cands, "pt+lv"), [_outcome(c) for c in cands])
    assert list(est) == pytest.approx([1 / 4, 2 / 6, 1 / 4, 0.0])


def test_scaling_curve_pools_chains_and_skips_incomplete_problems():
    rows = []
    for chain in range(2):
        for i in range(3):
            rows.append({"problem_id": 1, "chain_index": chain, "sample_index": i, "public_passed": i == 0,
                         "private_passed": i == 0 and chain == 0, "score": float(i + 3 * chain)})
    rows.append({"problem_id": 2, "public_passed": True, "private_passed": None, "score": 1.0})  # not executed
    rows += [{"problem_id": 3, "public_passed": True, "private_passed": True, "score": None}] * 3  # not scored
    rows += [{"problem_id": 4, "public_passed": True, "private_passed": True, "score": 1.0}] * 2  # too few
    curve = scaling_curve(rows, "pt+lv", 3)
    assert set(curve.values) == {1}
    assert curve.skipped == {"not executed": 1, "not scored": 1, "fewer than 3 candidates": 1}
    pooled = [r for r in rows if r["problem_id"] == 1]
    brute = [_brute([Cand(k, r["public_passed"], r["private_passed"], r["score"]) for k, r in enumerate(pooled)],
                    "pt+lv", n, all_orders=False) for n in (1, 2, 3)]
    assert list(curve.values[1]) == pytest.approx(brute)
    assert curve.at(2) == [pytest.approx(brute[1])]
    # pt needs no score: problem 3 counts there
    assert set(scaling_curve(rows, "pt", 3).values) == {1, 3}
    with pytest.raises(ValueError, match="unknown selector"):
        scaling_curve(rows, "best", 3)
