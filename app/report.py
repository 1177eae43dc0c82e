"""The paper's Table 1 across experiments, from the stored evaluation results, with confidence intervals.

Rows are (method, generator, verifier): the base model's evaluations are the "Instruct" rows (G0), each trained
generator G1, G2 ... its method's rows. Columns are (dataset, search): greedy and Best-of-N with each selector,
at the last turn T (or at every turn with ``per_turn``). A cell is the mean over problems of each problem's
share of chains solved (one chain for greedy), read from ``evaluation_results``: it equals the evaluation's
stored true success, and its interval is the percentile bootstrap over problems (``app.stats``). A comparison of
two rows is the paired difference over the problems both were evaluated on.

How a chain counts is what its evaluation stored (``evaluations.config.metric``): Best-of-N chains at their
first public pass, greedy chains as the experiment's ``eval.greedy_metric`` said (the last turn's label, or the
first public pass); columns with different counts are kept apart and named.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.errors import ConfigError, NotFound
from app.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, Interval, bootstrap_cis, paired_bootstrap_ci

METHOD_NAMES = {"mucode": "µCode", "multi_rft": "RFT multi-turn", "rft": "RFT single-turn", "rft_lv": "RFT+LV"}
BASE_NAME = "Instruct"
# --metric: which per-turn number a cell shows (the names of app.evaluation.compute_metrics).
METRICS = {"true": "true_success", "public": "public_success", "any": "any_success"}
METRIC_WORDS = {
    "true": "% of problems solved (true success: the mean over problems of the share of chains solved)",
    "public": "% of chains whose pick passed the public tests (public success)",
    "any": "% of problems that at least one chain solved (any of C)",
}
CHAIN_METRIC_WORDS = {"first_public": "first public pass", "last_turn": "last turn"}
DATASET_ORDER = ("mbpp", "humaneval", "mbpp_sanitized", "mbpp_plus", "humaneval_plus")
SELECTOR_ORDER = ("random", "lv", "pt", "pt+lv")


@dataclass(frozen=True)
class Column:
    """One searched setting on one dataset; ``chain_metric``: how its chains count (first_public | last_turn)."""

    dataset: str
    split: str | None
    mode: str  # greedy | bon
    selector: str | None
    candidates: int
    chains: int
    turns: int
    chain_metric: str

    @property
    def dataset_label(self) -> str:
        return self.dataset + (f":{self.split}" if self.split and self.split != "test" else "")

    @property
    def search(self) -> str:
        if self.mode == "greedy":
            s = "greedy" if self.chains == 1 else f"greedy C={self.chains}"
        else:
            s = f"BoN N={self.candidates} {self.selector or 'first'}"
        return s

    @property
    def label(self) -> str:
        """Unique within a report: ``mbpp BoN N=5 pt+lv C=10 T=3``."""
        chains = f" C={self.chains}" if self.mode == "bon" or self.chains > 1 else ""
        metric = " last-turn" if self.chain_metric == "last_turn" else ""
        return f"{self.dataset_label} {self.search}{chains} T={self.turns}{metric}"

    def sort_key(self) -> tuple:
        ds = DATASET_ORDER.index(self.dataset) if self.dataset in DATASET_ORDER else len(DATASET_ORDER)
        sel = SELECTOR_ORDER.index(self.selector) if self.selector in SELECTOR_ORDER else -1
        return (ds, self.dataset, self.split or "", self.mode != "greedy", self.candidates, sel, self.chains,
                self.turns, self.chain_metric)

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "mode": self.mode, "selector": self.selector,
                "candidates": self.candidates, "chains": self.chains, "turns": self.turns,
                "chain_metric": self.chain_metric, "label": self.label}


@dataclass(frozen=True)
class RowKey:
    experiment: str
    method: str
    generator: str  # G0, G1 ... or a model version name
    verifier: str | None  # RM1 ... (the verifier the Best-of-N cells searched with)

    @property
    def generator_index(self) -> int:
        m = re.fullmatch(r"G(\d+)", self.generator)
        return int(m.group(1)) if m else 10**6

    @property
    def is_base(self) -> bool:
        return self.generator == "G0"

    def sort_key(self) -> tuple:
        v = re.fullmatch(r"RM(\d+)", self.verifier or "")
        return (self.generator_index, self.generator, int(v.group(1)) if v else -1, self.verifier or "")


@dataclass
class Cell:
    evaluation_id: int
    evaluation: str
    intervals: dict[int, Interval]  # turn -> interval (the last turn, or every turn with per_turn)
    scores: dict[int, float]  # problem id -> its score at the last turn (for paired comparisons)
    chains: int  # chains per problem (C)
    stored: float | None  # the evaluation's stored number at T, for the consistency check


@dataclass
class Row:
    key: RowKey
    label: str  # "µCode", "Instruct", ... (with the experiment when two rows would read the same)
    cells: dict[Column, Cell] = field(default_factory=dict)


@dataclass
class Comparison:
    a: Row
    b: Row
    cells: dict[Column, Interval]  # a - b over the problems both have

    @property
    def label(self) -> str:
        return f"{self.a.label} {self.a.key.generator} − {self.b.label} {self.b.key.generator}"


@dataclass
class Report:
    experiments: list[str]
    metric: str
    per_turn: bool
    level: float
    resamples: int
    seed: int
    columns: list[Column]
    rows: list[Row]
    comparisons: list[Comparison]
    problems: dict[str, int]  # dataset label -> problems evaluated (the most any cell has)
    notes: list[str]

    def search_label(self, col: Column) -> str:
        """``col.search``, with C, T and the chain count added when another column of the dataset would read
        the same."""
        same = [c for c in self.columns if c.dataset_label == col.dataset_label and c.search == col.search]
        if len(same) < 2:
            return col.search
        extra = [f"C={col.chains}" if len({c.chains for c in same}) > 1 else "",
                 f"T={col.turns}" if len({c.turns for c in same}) > 1 else "",
                 CHAIN_METRIC_WORDS.get(col.chain_metric, col.chain_metric)
                 if len({c.chain_metric for c in same}) > 1 else ""]
        return " ".join([col.search, *(x for x in extra if x)])

    def turns_of(self, col: Column) -> list[int]:
        return list(range(1, col.turns + 1)) if self.per_turn else [col.turns]

    def caption(self) -> str:
        metrics = sorted({(c.mode, c.chain_metric) for c in self.columns})
        counting = "; ".join(
            f"{'greedy' if mode == 'greedy' else 'Best-of-N'} chains count at their "
            f"{CHAIN_METRIC_WORDS.get(cm, cm)}" for mode, cm in metrics)
        probs = ", ".join(f"{ds} {n}" for ds, n in self.problems.items())
        when = "at each turn t (cumulative)" if self.per_turn else "at the last turn T"
        return (f"{METRIC_WORDS[self.metric]}, {when}; {counting}. Each cell: estimate "
                f"[{self.level:.0%} percentile-bootstrap interval over problems, {self.resamples:,} resamples, "
                f"seed {self.seed}]. Problems: {probs}.")


# -- building ---------------------------------------------------------------------------------------------
def resolve_experiments(store, names: Sequence[str]) -> list[Any]:
    """Experiments by name, a comparison group's name standing for its members (``GROUP-mucode``, ...)."""
    out: list[Any] = []
    for name in names:
        try:
            exps = [store.get_experiment(name)]
        except NotFound:
            exps = store.report_group_members(name)
            if not exps:
                raise NotFound(
                    f"no experiment or experiment group named {name!r} (`mucode experiment list`)") from None
        for e in exps:
            if all(e.id != o.id for o in out):
                out.append(e)
    return out


def _column(ev) -> Column:
    metric = (ev.config or {}).get("metric", "first_public") if ev.mode == "greedy" else "first_public"
    return Column(ev.dataset, ev.split, ev.mode, ev.selector if ev.mode == "bon" else None,
                  int(ev.num_candidates), int(ev.num_chains), int(ev.max_turns), metric)


def _scores(row: dict[str, Any], metric: str, t: int) -> float:
    if metric == "any":
        return 1.0 if row["first_any"] is not None and row["first_any"] <= t else 0.0
    return float(row[f"{'solved' if metric == 'true' else 'public'}_{t}"]) / row["chains"]


def build_report(
    store,
    experiments: Sequence[Any],
    *,
    metric: str = "true",
    per_turn: bool = False,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    compare: Sequence[tuple[str, str]] | None = None,
    auto_compare: bool = True,
) -> Report:
    """The report of ``experiments`` (ORM rows, in the order given). ``compare``: pairs of row specs
    ``EXPERIMENT[:GENERATOR[:VERIFIER]]`` (A - B); without it, and with ``auto_compare``, the first experiment's
    last generator against each other experiment's last generator (one experiment: its last generator against
    its first)."""
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r} (one of: {', '.join(METRICS)})")
    if not experiments:
        raise ConfigError("name at least one experiment")
    notes: list[str] = []
    latest: dict[tuple[RowKey, Column], Any] = {}
    superseded = 0
    for exp in experiments:
        evs = [e for e in store.experiment_evaluations(exp.id) if e.mode in ("greedy", "bon")]
        pairs = store.evaluation_pairs([e.id for e in evs])
        for ev in evs:
            if ev.status != "done":
                notes.append(f"{ev.name}: {ev.status}, not in the table")
                continue
            p = pairs.get(ev.id, {})
            key = RowKey(exp.name, exp.method, p.get("generator") or str(ev.generator_id), p.get("verifier"))
            slot = (key, _column(ev))
            if slot in latest:
                superseded += 1
                if latest[slot].id > ev.id:
                    continue
            latest[slot] = ev
    if superseded:
        notes.append(f"{superseded} evaluation(s) of a cell evaluated again later: the latest one is shown")
    max_t = max((c.turns for _, c in latest), default=1)
    outcomes: dict[int, list[dict[str, Any]]] = {}
    for r in store.report_problem_outcomes([ev.id for ev in latest.values()], max_t):
        outcomes.setdefault(r["evaluation_id"], []).append(r)

    # Every cell's per-problem scores first, then all intervals in one batch (app.stats.bootstrap_cis).
    mkey = METRICS[metric]
    todo: list[tuple[RowKey, Column, Any, list[dict[str, Any]], list[int]]] = []
    samples: list[list[float]] = []
    for (key, col), ev in latest.items():
        probs = outcomes.get(ev.id, [])
        if not probs:
            notes.append(f"{ev.name}: done but has no stored results, not in the table")
            continue
        turns = list(range(1, col.turns + 1)) if per_turn else [col.turns]
        todo.append((key, col, ev, probs, turns))
        samples += [[_scores(r, metric, t) for r in probs] for t in turns]
    intervals = iter(bootstrap_cis(samples, level=level, resamples=resamples, seed=seed))
    rows: dict[RowKey, Row] = {}
    for key, col, ev, probs, turns in todo:
        ints = {t: next(intervals) for t in turns}
        per = {r["turn"]: r for r in (ev.metrics or {}).get("per_turn", [])}
        stored = per.get(col.turns, {}).get(mkey)
        est = ints[col.turns].estimate
        if stored is not None and abs(stored - est) > 1e-9:
            notes.append(f"{ev.name}: its stored {mkey} {stored:.4f} differs from its results' mean over "
                         f"problems {est:.4f} (problems with different numbers of chains)")
        row = rows.setdefault(key, Row(key, ""))
        row.cells[col] = Cell(ev.id, ev.name, ints, {r["problem_id"]: _scores(r, metric, col.turns) for r in probs},
                              col.chains, stored)
    order = {e.name: i for i, e in enumerate(experiments)}
    ordered = sorted(rows.values(), key=lambda r: (not r.key.is_base, order[r.key.experiment], r.key.sort_key()))
    _label_rows(ordered)
    columns = sorted({c for r in ordered for c in r.cells}, key=Column.sort_key)
    problems: dict[str, int] = {}
    for c in columns:
        n = max(len(r.cells[c].scores) for r in ordered if c in r.cells)
        problems[c.dataset_label] = max(problems.get(c.dataset_label, 0), n)

    pairs_to_compare: list[tuple[Row, Row]] = []
    if compare:
        for a, b in compare:
            pairs_to_compare.append((find_row(ordered, a), find_row(ordered, b)))
    elif auto_compare:
        pairs_to_compare = _default_pairs(ordered, [e.name for e in experiments])
    comparisons = [compare_rows(a, b, columns, level=level, resamples=resamples, seed=seed)
                   for a, b in pairs_to_compare]
    for cmp in comparisons:
        for col, d in cmp.cells.items():
            na, nb = len(cmp.a.cells[col].scores), len(cmp.b.cells[col].scores)
            if d.n != na or d.n != nb:
                notes.append(f"Δ {cmp.label}, {col.label}: paired over the {d.n} problems both were evaluated "
                             f"on (of {na} and {nb})")
    return Report([e.name for e in experiments], metric, per_turn, level, resamples, seed, columns, ordered,
                  comparisons, problems, notes)


def _label_rows(rows: list[Row]) -> None:
    for r in rows:
        r.label = BASE_NAME if r.key.is_base else METHOD_NAMES.get(r.key.method, r.key.method)
    seen: dict[tuple[str, str, str | None], set[str]] = {}
    for r in rows:
        seen.setdefault((r.label, r.key.generator, r.key.verifier), set()).add(r.key.experiment)
    for r in rows:
        if len(seen[(r.label, r.key.generator, r.key.verifier)]) > 1:
            r.label = f"{r.label} [{r.key.experiment}]"


def headline(rows: Sequence[Row], experiment: str) -> Row | None:
    """An experiment's last generator: the highest G index, then the most cells, then the latest verifier."""
    mine = [r for r in rows if r.key.experiment == experiment]
    if not mine:
        return None
    return max(mine, key=lambda r: (r.key.generator_index if r.key.generator_index < 10**6 else -1, len(r.cells),
                                    r.key.sort_key()[2], max(c.evaluation_id for c in r.cells.values())))


def find_row(rows: Sequence[Row], spec: str) -> Row:
    """``EXPERIMENT`` (its last generator), ``EXPERIMENT:G1`` or ``EXPERIMENT:G1:RM1``."""
    exp, _, rest = spec.partition(":")
    gen, _, ver = rest.partition(":")
    if not gen:
        row = headline(rows, exp)
        if row is None:
            raise NotFound(f"--compare {spec}: experiment {exp!r} has no finished evaluation in this report")
        return row
    found = [r for r in rows if r.key.experiment == exp and r.key.generator == gen
             and (not ver or r.key.verifier == ver)]
    if not found:
        have = ", ".join(f"{r.key.experiment}:{r.key.generator}:{r.key.verifier}" for r in rows) or "none"
        raise NotFound(f"--compare {spec}: no such row (rows: {have})")
    return max(found, key=lambda r: r.key.sort_key())


def _default_pairs(rows: list[Row], experiments: list[str]) -> list[tuple[Row, Row]]:
    heads = [headline(rows, e) for e in experiments]
    if len(experiments) == 1:
        head = heads[0]
        base = [r for r in rows if r.key.experiment == experiments[0] and r is not head]
        if head is None or not base:
            return []
        return [(head, min(base, key=lambda r: r.key.sort_key()))]
    first = heads[0]
    return [(first, h) for h in heads[1:] if first is not None and h is not None]


def compare_rows(a: Row, b: Row, columns: Sequence[Column], *, level: float = DEFAULT_LEVEL,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Comparison:
    """a - b in every column both rows have, paired over the problems both were evaluated on."""
    cells = {}
    for col in columns:
        if col in a.cells and col in b.cells:
            d = paired_bootstrap_ci(a.cells[col].scores, b.cells[col].scores, level=level, resamples=resamples,
                                    seed=seed)
            if d.n:
                cells[col] = d
    return Comparison(a, b, cells)


# -- flat records (csv, json) -----------------------------------------------------------------------------
def records(report: Report) -> list[dict[str, Any]]:
    """One record per cell and turn, then one per comparison cell: fractions (not percentages)."""
    out: list[dict[str, Any]] = []
    for row in report.rows:
        for col in report.columns:
            cell = row.cells.get(col)
            if cell is None:
                continue
            for t, iv in cell.intervals.items():
                out.append({"kind": "cell", "experiment": row.key.experiment, "method": row.key.method,
                            "row": row.label, "generator": row.key.generator, "verifier": row.key.verifier,
                            **_col_fields(col), "turn": t, "metric": report.metric, **_iv(iv),
                            "evaluation": cell.evaluation, "evaluation_id": cell.evaluation_id})
    for cmp in report.comparisons:
        for col, iv in cmp.cells.items():
            out.append({"kind": "difference", "experiment": cmp.a.key.experiment, "method": cmp.a.key.method,
                        "row": cmp.label, "generator": cmp.a.key.generator, "verifier": cmp.a.key.verifier,
                        "other_experiment": cmp.b.key.experiment, "other_generator": cmp.b.key.generator,
                        "other_verifier": cmp.b.key.verifier, **_col_fields(col), "turn": col.turns,
                        "metric": report.metric, **_iv(iv)})
    return out


def _col_fields(col: Column) -> dict[str, Any]:
    return {"dataset": col.dataset, "split": col.split, "mode": col.mode, "selector": col.selector,
            "candidates": col.candidates, "chains": col.chains, "turns": col.turns,
            "chain_metric": col.chain_metric, "column": col.label}


def _iv(iv: Interval) -> dict[str, Any]:
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "n": iv.n, "level": iv.level}


def as_json(report: Report) -> dict[str, Any]:
    recs = records(report)
    return {
        "experiments": report.experiments, "metric": report.metric, "per_turn": report.per_turn,
        "level": report.level, "resamples": report.resamples, "seed": report.seed, "caption": report.caption(),
        "problems": report.problems, "columns": [c.as_dict() for c in report.columns],
        "cells": [r for r in recs if r["kind"] == "cell"],
        "comparisons": [r for r in recs if r["kind"] == "difference"],
        "notes": report.notes,
    }
