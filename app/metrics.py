"""Verifier quality metrics: pure functions over (score, label) data, no numpy or sklearn needed.

- ``roc_auc``: probability that a random correct response outscores a random incorrect one (ties count 1/2),
  over all responses regardless of problem.
- ``pair_accuracy``: the same probability restricted to pairs of the *same* problem, i.e. what the
  Bradley-Terry objective trains for (and what relabeling and Best-of-N use: ranking within a problem).
- ``bon_selection_accuracy``: over groups of N candidates with at least one correct, how often the top-scored
  candidate is correct (a tie at the top counts the share of correct candidates among the tied).
- ``calibration_table`` / ``expected_calibration_error``: reliability of ``sigmoid(score)`` as a probability,
  meaningful for BCE-trained verifiers.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _check(scores: Sequence[float], labels: Sequence[Any]) -> None:
    if len(scores) != len(labels):
        raise ValueError(f"scores and labels differ in length ({len(scores)} != {len(labels)})")


def _ordered_pairs(scores: Sequence[float], labels: Sequence[Any]) -> tuple[float, int]:
    """(number of correctly ordered (pos, neg) pairs, ties counted 1/2; number of pairs), in O(n log n)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    wins = 0.0
    negs_below = 0  # negatives with a strictly lower score than the current tie block
    n_pos = n_neg = 0
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and scores[order[j]] == scores[order[i]]:
            j += 1
        block = order[i:j]
        pos = sum(1 for k in block if labels[k])
        neg = len(block) - pos
        wins += pos * negs_below + 0.5 * pos * neg
        negs_below += neg
        n_pos += pos
        n_neg += neg
        i = j
    return wins, n_pos * n_neg


def roc_auc(scores: Sequence[float], labels: Sequence[Any]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U / (P·N)); None when a class is missing."""
    _check(scores, labels)
    wins, pairs = _ordered_pairs(scores, labels)
    return wins / pairs if pairs else None


def pair_accuracy(
    scores: Sequence[float], labels: Sequence[Any], groups: Sequence[Hashable]
) -> tuple[float | None, int]:
    """Share of all (correct, incorrect) pairs of the same group (problem) that the scores order right.

    Returns (accuracy or None when no group has both classes, number of pairs). Every pair counts once, so a
    problem with many responses weighs more, as in a pooled pairwise accuracy.
    """
    _check(scores, labels)
    if len(groups) != len(scores):
        raise ValueError("groups and scores differ in length")
    by_group: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    wins = 0.0
    pairs = 0
    for idx in by_group.values():
        w, p = _ordered_pairs([scores[i] for i in idx], [labels[i] for i in idx])
        wins += w
        pairs += p
    return (wins / pairs if pairs else None), pairs


def bon_selection_accuracy(groups: Iterable[Sequence[tuple[float, Any]]]) -> tuple[float | None, int]:
    """Best-of-N selection accuracy over groups of (score, label) candidates.

    Only groups with at least one correct candidate count (a selector cannot be right otherwise). A tie at the
    top scores the share of correct candidates among the tied ones (the expectation under a random
    tie-break). Returns (accuracy or None, number of groups counted).
    """
    total = 0.0
    n = 0
    for group in groups:
        if not group or not any(lab for _, lab in group):
            continue
        top = max(s for s, _ in group)
        tied = [lab for s, lab in group if s == top]
        total += sum(1 for lab in tied if lab) / len(tied)
        n += 1
    return (total / n if n else None), n


def oracle_rate(groups: Iterable[Sequence[tuple[float, Any]]]) -> float | None:
    """Share of groups with at least one correct candidate (the ceiling of any selector)."""
    gs = [g for g in groups if g]
    return sum(1 for g in gs if any(lab for _, lab in g)) / len(gs) if gs else None


def random_selection_accuracy(groups: Iterable[Sequence[tuple[float, Any]]]) -> float | None:
    """The baseline a verifier must beat: expected accuracy of a uniform pick, over groups with a correct one."""
    vals = [sum(1 for _, lab in g if lab) / len(g) for g in groups if g and any(lab for _, lab in g)]
    return sum(vals) / len(vals) if vals else None


def make_bon_groups(
    items_by_key: Mapping[Hashable, Sequence[tuple[float, Any]]], n: int, seed: int = 0
) -> list[list[tuple[float, Any]]]:
    """Seeded groups of ``n`` candidates drawn without replacement within each key (problem).

    Each key's items are shuffled with ``Random(f"{seed}:{key}")`` and cut into consecutive groups of ``n``;
    a remainder shorter than ``n`` is dropped. Keys are visited in sorted order so the result is deterministic.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    out: list[list[tuple[float, Any]]] = []
    for key in sorted(items_by_key, key=str):
        items = list(items_by_key[key])
        random.Random(f"{seed}:{key}").shuffle(items)
        for i in range(0, len(items) - n + 1, n):
            out.append(items[i : i + n])
    return out


def calibration_table(
    probs: Sequence[float], labels: Sequence[Any], bins: int = 10
) -> list[dict[str, float | int | None]]:
    """Equal-width reliability table over [0, 1]: per bin the count, mean predicted probability and the
    observed share of correct responses. ``probs`` are probabilities (use ``sigmoid(score)`` for logits)."""
    _check(probs, labels)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    counts = [0] * bins
    psum = [0.0] * bins
    pos = [0] * bins
    for p, lab in zip(probs, labels):
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ValueError(f"probability out of range: {p}")
        b = min(int(p * bins), bins - 1)
        counts[b] += 1
        psum[b] += p
        pos[b] += 1 if lab else 0
    table = []
    for b in range(bins):
        table.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "count": counts[b],
                "mean_predicted": psum[b] / counts[b] if counts[b] else None,
                "observed": pos[b] / counts[b] if counts[b] else None,
            }
        )
    return table


def expected_calibration_error(table: Sequence[Mapping[str, Any]]) -> float | None:
    """ECE: the count-weighted mean |mean predicted - observed| over the bins of a calibration table."""
    total = sum(int(row["count"]) for row in table)
    if not total:
        return None
    return sum(
        int(row["count"]) * abs(float(row["mean_predicted"]) - float(row["observed"]))
        for row in table
        if row["count"]
    ) / total


def brier_score(probs: Sequence[float], labels: Sequence[Any]) -> float | None:
    _check(probs, labels)
    if not probs:
        return None
    return sum((p - (1.0 if lab else 0.0)) ** 2 for p, lab in zip(probs, labels)) / len(probs)
