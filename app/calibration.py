"""Verifier diagnostics from stored scores and oracle labels: reliability (calibration) and ROC.

The verifier's score is a logit: ``sigmoid(score)`` is its predicted probability that a candidate passes the
private tests. The store aggregates candidates into bins (``app/store/dashboard.py``); these pure functions turn
bins into the plotted points:

- **Reliability diagram**: candidates binned by predicted probability (equal-width bins on [0, 1], i.e. score
  edges ``logit(k / bins)``); per bin the mean predicted probability against the observed pass rate, and the
  expected calibration error ``ECE = sum_b n_b / n * |observed_b - predicted_b|``.
- **ROC**: candidates in score quantiles (lowest first); lowering the threshold one bin at a time gives exact
  points of the ROC curve (true-positive rate against false-positive rate). The area under the piecewise-linear
  curve through all distinct-score points is the Mann-Whitney statistic (ties count half), which the store
  also computes exactly from ranks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def probability_edges(bins: int) -> list[float]:
    """The score edges of ``bins`` equal-width probability bins: ``logit(k / bins)`` for k = 1..bins-1."""
    if bins < 2:
        raise ValueError("need at least 2 bins")
    return [math.log(k / (bins - k)) for k in range(1, bins)]


def reliability(rows: Iterable[Mapping[str, Any]], bins: int) -> dict[str, Any]:
    """Reliability points from bins ``{bin, candidates, correct, sum_prob}`` (bin 0..bins-1; empty bins may be
    missing): ``{"points": [{bin, low, high, candidates, predicted, observed}], "ece", "candidates"}``."""
    points = []
    n_total = 0
    gap = 0.0
    for r in sorted(rows, key=lambda r: r["bin"]):
        n = int(r["candidates"] or 0)
        if n == 0:
            continue
        b = int(r["bin"])
        if not 0 <= b < bins:
            raise ValueError(f"bin {b} outside 0..{bins - 1}")
        predicted = float(r["sum_prob"]) / n
        observed = float(r["correct"] or 0) / n
        points.append({"bin": b, "low": b / bins, "high": (b + 1) / bins, "candidates": n,
                       "predicted": predicted, "observed": observed})
        n_total += n
        gap += n * abs(observed - predicted)
    return {"points": points, "ece": gap / n_total if n_total else None, "candidates": n_total}


def roc_points(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """ROC points from score bins ordered lowest score first, each ``{candidates, correct}`` (and optionally
    ``min_score``): from (0, 0) (threshold above every score) to (1, 1), lowering the threshold a bin at a time.
    Empty when all candidates share one label."""
    pos = sum(int(r["correct"] or 0) for r in rows)
    neg = sum(int(r["candidates"] or 0) for r in rows) - pos
    if pos == 0 or neg == 0:
        return []
    tp = fp = 0
    out: list[dict[str, Any]] = [{"fpr": 0.0, "tpr": 0.0, "threshold": None}]
    for r in reversed(list(rows)):
        p = int(r["correct"] or 0)
        tp += p
        fp += int(r["candidates"] or 0) - p
        low = r.get("min_score")
        out.append({"fpr": fp / neg, "tpr": tp / pos, "threshold": None if low is None else float(low)})
    return out


def auc(points: Sequence[Mapping[str, float]]) -> float | None:
    """Area under the piecewise-linear curve through ROC ``points`` (trapezoids)."""
    if len(points) < 2:
        return None
    area = 0.0
    for a, b in itertools.pairwise(points):
        area += (b["fpr"] - a["fpr"]) * (a["tpr"] + b["tpr"]) / 2.0
    return area


def score_bins(scores: Sequence[float], labels: Sequence[bool]) -> list[dict[str, Any]]:
    """One bin per distinct score (lowest first): the exact ROC of raw scores through ``roc_points``."""
    if len(scores) != len(labels):
        raise ValueError("scores and labels must have the same length")
    acc: dict[float, list[int]] = {}
    for s, y in zip(scores, labels):
        c = acc.setdefault(float(s), [0, 0])
        c[0] += 1
        c[1] += int(bool(y))
    return [{"min_score": s, "candidates": n, "correct": k} for s, (n, k) in sorted(acc.items())]


def verifier_curves(rows: Iterable[Mapping[str, Any]], bins: int) -> dict[Any, dict[str, Any]]:
    """Per verifier, from ``dash_verifier_curves`` rows (one per score quantile ``tile`` and probability
    ``bin``): ``roc`` (the ROC points, through ``roc_points``), ``reliability`` (``reliability``), the totals
    ``candidates`` / ``correct`` and the exact ``auc``: the rank-sum (Mann-Whitney) statistic
    ``(R - P(P + 1) / 2) / (P N)`` with R the sum of the correct candidates' mid-ranks (ties share a rank)."""
    tiles: dict[Any, dict[int, dict[str, Any]]] = {}
    rel: dict[Any, dict[int, dict[str, Any]]] = {}
    rank2: dict[Any, int] = {}
    for r in rows:
        v = r["verifier_id"]
        t = tiles.setdefault(v, {}).setdefault(int(r["tile"]), {"candidates": 0, "correct": 0, "min_score": None})
        t["candidates"] += int(r["candidates"])
        t["correct"] += int(r["correct"] or 0)
        low = float(r["min_score"])
        t["min_score"] = low if t["min_score"] is None else min(t["min_score"], low)
        b = rel.setdefault(v, {}).setdefault(int(r["bin"]), {"bin": int(r["bin"]), "candidates": 0, "correct": 0,
                                                            "sum_prob": 0.0})
        b["candidates"] += int(r["candidates"])
        b["correct"] += int(r["correct"] or 0)
        b["sum_prob"] += float(r["sum_prob"])
        rank2[v] = rank2.get(v, 0) + int(r["midrank2_correct"] or 0)
    out = {}
    for v, by_tile in tiles.items():
        ordered = [by_tile[k] for k in sorted(by_tile)]
        n = sum(t["candidates"] for t in ordered)
        pos = sum(t["correct"] for t in ordered)
        area = (rank2[v] / 2.0 - pos * (pos + 1) / 2.0) / (pos * (n - pos)) if 0 < pos < n else None
        out[v] = {"candidates": n, "correct": pos, "auc": area, "roc": roc_points(ordered),
                  "reliability": reliability(rel[v].values(), bins)}
    return out
