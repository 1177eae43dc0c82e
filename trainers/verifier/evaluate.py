"""Verifier quality metrics from the store, per verifier version (stored in ``model_versions.metrics["eval"]``).

Two evaluation sets:
- ``holdout``: the labelled rows (same labels as training) of the train problems that the verifier's training
  set held out (``holdout_problem_ids``), from the same rounds;
- ``mbpp_test``: every executed candidate of evaluation rollouts on MBPP test (label = its private verdict),
  when such rollouts exist.
On each: ROC-AUC, same-problem pair accuracy, Best-of-N selection accuracy (groups: the N candidates of a
Best-of-N turn where turns have several; otherwise seeded groups of ``bon_n`` responses per problem), with the
random-pick and oracle baselines; for BCE verifiers a calibration table of ``sigmoid(score)`` and its ECE.
Missing scores are computed first (``score_missing``) through the same scorer as ``mucode verifier score``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app import metrics as M
from trainers.verifier.config import VerifierTrainingConfig

if TYPE_CHECKING:
    from app.store import Store


def ranking_metrics(
    rows: Sequence[dict[str, Any]],
    *,
    bon_n: int = 5,
    seed: int = 0,
    calibration_bins: int | None = None,
    group_key: str | None = None,
) -> dict[str, Any]:
    """Metrics of scored rows (dicts with score, label, problem_id[, group_key]); unscored rows are counted."""
    scored = [r for r in rows if r.get("score") is not None]
    scores = [float(r["score"]) for r in scored]
    labels = [bool(r["label"]) for r in scored]
    out: dict[str, Any] = {
        "rows": len(rows),
        "unscored": len(rows) - len(scored),
        "positives": sum(labels),
        "problems": len({r["problem_id"] for r in scored}),
        "roc_auc": M.roc_auc(scores, labels),
    }
    acc, n_pairs = M.pair_accuracy(scores, labels, [r["problem_id"] for r in scored])
    out["pair_accuracy"], out["pairs"] = acc, n_pairs
    groups: list[list[tuple[float, bool]]] = []
    if group_key is not None:
        by: dict[Any, list[tuple[float, bool]]] = defaultdict(list)
        for r, s, lab in zip(scored, scores, labels):
            by[r[group_key]].append((s, lab))
        groups = [g for g in by.values() if len(g) > 1]
    if groups:
        out["bon_groups_from"] = group_key
    else:
        by_problem: dict[Any, list[tuple[float, bool]]] = defaultdict(list)
        for r, s, lab in zip(scored, scores, labels):
            by_problem[r["problem_id"]].append((s, lab))
        groups = M.make_bon_groups(by_problem, bon_n, seed)
        out["bon_groups_from"] = f"seeded groups of {bon_n} per problem"
    bon, n_groups = M.bon_selection_accuracy(groups)
    out["bon_n"] = round(sum(len(g) for g in groups) / len(groups), 2) if groups else bon_n
    out["bon_accuracy"], out["bon_groups"] = bon, n_groups
    out["bon_random_baseline"] = M.random_selection_accuracy(groups)
    out["bon_oracle_rate"] = M.oracle_rate(groups)
    if scores:
        out["score_mean"] = sum(scores) / len(scores)
        pos = [s for s, lab in zip(scores, labels) if lab]
        neg = [s for s, lab in zip(scores, labels) if not lab]
        out["score_mean_correct"] = sum(pos) / len(pos) if pos else None
        out["score_mean_incorrect"] = sum(neg) / len(neg) if neg else None
    if calibration_bins:
        probs = [M.sigmoid(s) for s in scores]
        table = M.calibration_table(probs, labels, calibration_bins)
        out["calibration"] = table
        out["ece"] = M.expected_calibration_error(table)
        out["brier"] = M.brier_score(probs, labels)
    return out


def _score_missing(store: Store, verifier: dict[str, Any], rows: list[dict[str, Any]], scorer,
                   progress: bool) -> int:
    missing = [r["candidate_id"] for r in rows if r.get("score") is None]
    if not missing:
        return 0
    from workers.tasks.score import score_candidates

    return score_candidates(store, verifier["id"], candidate_ids=missing, scorer=scorer, progress=progress)


def evaluate_verifier(
    store: Store,
    verifier_ref: int | str,
    *,
    scorer=None,
    score_missing: bool = True,
    evaluation_ids: Sequence[int] | None = None,
    progress: bool = False,
    save: bool = True,
) -> dict[str, Any]:
    """Compute (and by default store) the verifier's metrics; returns the ``eval`` dict."""
    v = store.get_verifier(verifier_ref)
    cfg = VerifierTrainingConfig.from_dict(v["config"]) if v["config"] else VerifierTrainingConfig()
    bins = cfg.calibration_bins if cfg.loss == "bce" else None
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    newly_scored = 0

    ts = store.get_verifier_training_set(v["training_set_id"], required=False) if v["training_set_id"] else None
    holdout = (ts or {}).get("config", {}).get("holdout_problem_ids") or []
    if ts is not None and holdout:
        round_ids = ts["config"]["round_ids"]
        rows = store.verifier_training_rows(round_ids, problem_ids=holdout, verifier_id=v["id"])
        if score_missing and rows:
            newly_scored += _score_missing(store, v, rows, scorer, progress)
            rows = store.verifier_training_rows(round_ids, problem_ids=holdout, verifier_id=v["id"])
        result["holdout"] = ranking_metrics(rows, bon_n=cfg.bon_n, seed=cfg.seed, calibration_bins=bins)
        result["holdout"]["holdout_problems"] = len(holdout)
    else:
        result["holdout"] = None

    rows = store.verifier_eval_rows(verifier_id=v["id"], evaluation_ids=evaluation_ids)
    if rows:
        if score_missing:
            newly_scored += _score_missing(store, v, rows, scorer, progress)
            rows = store.verifier_eval_rows(verifier_id=v["id"], evaluation_ids=evaluation_ids)
        result["mbpp_test"] = ranking_metrics(
            rows, bon_n=cfg.bon_n, seed=cfg.seed, calibration_bins=bins, group_key="turn_id"
        )
        result["mbpp_test"]["evaluations"] = sorted({r["evaluation_id"] for r in rows})
    else:
        result["mbpp_test"] = None
    result["newly_scored"] = newly_scored
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["evaluated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if save:
        store.set_verifier_metrics(v["id"], {"eval": result})
    return result
