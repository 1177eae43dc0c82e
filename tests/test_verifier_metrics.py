"""app.metrics: the verifier quality metrics, checked against brute-force definitions."""

from __future__ import annotations

import itertools
import random

import pytest

from app import metrics as M


def _brute_auc(scores, labels):
    pairs = [(s, t) for s, ls in zip(scores, labels) if ls for t, lt in zip(scores, labels) if not lt]
    if not pairs:
        return None
    return sum(1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs) / len(pairs)


def test_roc_auc_matches_brute_force_with_ties():
    rng = random.Random(1)
    for _ in range(50):
        n = rng.randint(2, 30)
        scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]
        labels = [rng.random() < 0.4 for _ in range(n)]
        assert M.roc_auc(scores, labels) == pytest.approx(_brute_auc(scores, labels))


def test_roc_auc_extremes():
    assert M.roc_auc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert M.roc_auc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert M.roc_auc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    assert M.roc_auc([1, 2], [1, 1]) is None  # one class only
    with pytest.raises(ValueError):
        M.roc_auc([1, 2], [1])


def test_pair_accuracy_only_within_groups():
    # Across groups the order is wrong (group b's incorrect outscores group a's correct) but that pair never counts.
    scores = [1.0, 0.0, 10.0, 9.0]
    labels = [1, 0, 1, 0]
    groups = ["a", "a", "b", "b"]
    assert M.roc_auc(scores, labels) == 0.75
    assert M.pair_accuracy(scores, labels, groups) == (1.0, 2)
    acc, n = M.pair_accuracy([0.0, 1.0, 2.0, 2.0, 5.0], [1, 0, 0, 1, 1], ["a", "a", "b", "b", "b"])
    # a: 0 right of 1; b: (2 vs 2) tie 0.5, (5 vs 2) right -> 1.5 of 3 pairs
    assert n == 3 and acc == pytest.approx(1.5 / 3)
    assert M.pair_accuracy([1.0], [1], ["a"]) == (None, 0)


def test_bon_selection_accuracy():
    groups = [
        [(0.9, True), (0.1, False)],  # right
        [(0.9, False), (0.1, True)],  # wrong
        [(0.5, False), (0.2, False)],  # no correct candidate: not counted
        [(0.7, True), (0.7, False), (0.1, True)],  # tie at the top: half right
    ]
    acc, n = M.bon_selection_accuracy(groups)
    assert n == 3 and acc == pytest.approx(1.5 / 3)
    assert M.oracle_rate(groups) == 0.75
    assert M.random_selection_accuracy(groups) == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert M.bon_selection_accuracy([]) == (None, 0)


def test_make_bon_groups_is_seeded_and_within_problem():
    items = {p: [(float(i), p) for i in range(12)] for p in ("x", "y")}
    g1 = M.make_bon_groups(items, 5, seed=3)
    assert g1 == M.make_bon_groups(items, 5, seed=3)
    assert g1 != M.make_bon_groups(items, 5, seed=4)
    assert len(g1) == 4 and all(len(g) == 5 for g in g1)  # 12 -> two full groups per problem
    assert all(len({lab for _, lab in g}) == 1 for g in g1)  # never mixes problems
    assert all(len({s for s, _ in g}) == 5 for g in g1)  # without replacement


def test_calibration_table_and_ece():
    probs = [0.05, 0.15, 0.95, 0.92, 0.55, 0.5]
    labels = [0, 0, 1, 1, 1, 0]
    table = M.calibration_table(probs, labels, bins=10)
    assert len(table) == 10 and sum(r["count"] for r in table) == 6
    top = table[9]
    assert top["count"] == 2 and top["observed"] == 1.0 and top["mean_predicted"] == pytest.approx(0.935)
    assert table[5]["count"] == 2 and table[5]["observed"] == 0.5
    assert table[3]["count"] == 0 and table[3]["observed"] is None
    ece = M.expected_calibration_error(table)
    expected = (0.05 + 0.15 + 2 * (1 - 0.935) + 2 * abs(0.525 - 0.5)) / 6
    assert ece == pytest.approx(expected)
    perfect = M.calibration_table([1.0, 0.0], [1, 0], bins=4)
    assert M.expected_calibration_error(perfect) == 0.0
    with pytest.raises(ValueError):
        M.calibration_table([1.5], [1])


def test_sigmoid_is_stable():
    assert M.sigmoid(0) == 0.5
    assert M.sigmoid(1000) == 1.0 and M.sigmoid(-1000) == 0.0
    for a, b in itertools.pairwise([-5, -1, 0, 1, 5]):
        assert M.sigmoid(a) < M.sigmoid(b)
