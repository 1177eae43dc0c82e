"""Verifier reliability and ROC (app.calibration) against hand cases and the Mann-Whitney statistic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.calibration import auc, probability_edges, reliability, roc_points, score_bins, sigmoid


def _mann_whitney(scores, labels) -> float:
    """P(score of a random correct > score of a random incorrect), ties half: every pair counted."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else (0.5 if p == n else 0.0) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_roc_of_a_hand_case():
    # scores 3 > 2 > 1 > 0 with labels 1, 0, 1, 0: thresholds admit 1 (TP), then 1 FP, then 1 TP, then 1 FP
    pts = roc_points(score_bins([0.0, 1.0, 2.0, 3.0], [False, True, False, True]))
    assert [(p["fpr"], p["tpr"]) for p in pts] == [(0, 0), (0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
    assert auc(pts) == pytest.approx(0.75)  # 3 of the 4 (correct, incorrect) pairs are ordered right
    assert pts[1]["threshold"] == 3.0 and pts[0]["threshold"] is None


@pytest.mark.parametrize("seed", range(5))
def test_auc_of_the_exact_roc_is_the_mann_whitney_statistic(seed):
    rng = np.random.default_rng(seed)
    n = 60
    labels = rng.random(n) < 0.4
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    pts = roc_points(score_bins(list(scores), list(labels)))
    assert auc(pts) == pytest.approx(_mann_whitney(scores, labels))


def test_coarse_bins_give_points_of_the_exact_curve():
    rng = np.random.default_rng(3)
    labels = rng.random(200) < 0.5
    scores = rng.normal(labels * 1.0, 1.0)  # continuous: no ties
    exact = {(p["fpr"], p["tpr"]) for p in roc_points(score_bins(list(scores), list(labels)))}
    order = np.argsort(scores)
    bins = [{"candidates": len(chunk), "correct": int(labels[chunk].sum())} for chunk in np.array_split(order, 10)]
    coarse = roc_points(bins)
    assert len(coarse) == 11 and {(p["fpr"], p["tpr"]) for p in coarse} <= exact
    assert auc(coarse) <= auc(roc_points(score_bins(list(scores), list(labels)))) + 1e-12
    assert roc_points([{"candidates": 3, "correct": 3}]) == []  # one class only: no curve


def test_reliability_of_a_hand_case():
    edges = probability_edges(4)
    assert edges == pytest.approx([math.log(1 / 3), 0.0, math.log(3)])
    scores = [-3.0, -0.5, 0.2, 0.4, 2.0, 4.0]
    labels = [0, 0, 1, 0, 1, 1]
    rows: dict[int, dict] = {}
    for s, y in zip(scores, labels):
        b = int(sigmoid(s) * 4)
        r = rows.setdefault(b, {"bin": b, "candidates": 0, "correct": 0, "sum_prob": 0.0})
        r["candidates"] += 1
        r["correct"] += y
        r["sum_prob"] += sigmoid(s)
    out = reliability(rows.values(), 4)
    got = {p["bin"]: (p["candidates"], p["observed"]) for p in out["points"]}
    assert got == {0: (1, 0.0), 1: (1, 0.0), 2: (2, 0.5), 3: (2, 1.0)}
    p2 = next(p for p in out["points"] if p["bin"] == 2)
    assert p2["predicted"] == pytest.approx((sigmoid(0.2) + sigmoid(0.4)) / 2)
    ece = (abs(0 - sigmoid(-3.0)) + abs(0 - sigmoid(-0.5)) + 2 * abs(0.5 - p2["predicted"])
           + 2 * abs(1.0 - (sigmoid(2.0) + sigmoid(4.0)) / 2)) / 6
    assert out["ece"] == pytest.approx(ece)
    with pytest.raises(ValueError):
        reliability([{"bin": 4, "candidates": 1, "correct": 0, "sum_prob": 0.9}], 4)
