"""Shared pieces of the dashboard pages: the store, cached queries, the sidebar, paging, links, formatting.

Every read goes through ``app.store.Store`` (the ``dash_*`` methods of ``app/store/dashboard.py``); the store
is one ``st.cache_resource`` per database URL and query results are ``st.cache_data`` with a short TTL, so a
page that researchers keep open while a run goes on stays current without hammering the database.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

CACHE_TTL_S = 15
# Aggregates of a finished round do not change: they are kept this long (keyed by the round's finish time).
FINISHED_TTL_S = 3600
ROUND_WINDOWS = {"last 3 rounds": 3, "last 5 rounds": 5, "last 10 rounds": 10, "all rounds": None}
PAGE_SIZE = 25
FOOTER_MARKER = "mucode dashboard ·"
EMPTY_HINT = (
    "Nothing here yet. Load data and start a run: `mucode db upgrade`, `mucode data load mbpp humaneval`, "
    "then `mucode demo` for a small CPU round, or `mucode experiment create …` and `mucode round run NAME`."
)

# The st.Page objects of the app, filled by home.py on every run (so pages can link to each other).
PAGES: dict[str, Any] = {}


class StoreUnavailable(RuntimeError):
    pass


def database_url() -> str:
    from app.config import Settings

    return Settings().database_url  # read fresh: the environment decides, not a process-wide cache


@st.cache_resource(show_spinner=False)
def _store(url: str):
    from app.store import Store

    return Store(url)


def store():
    return _store(database_url())


_MIGRATED_OK: dict[str, float] = {}  # url -> when the schema was last found at head (rechecked each minute)


def check_store() -> str | None:
    """None when the store is reachable and migrated, else a message telling the user what to do."""
    import time

    from app.db.engine import redact

    url = database_url()
    if time.monotonic() - _MIGRATED_OK.get(url, -1e9) < 60:
        return None
    try:
        s = _store(url)
        if s.is_migrated():
            _MIGRATED_OK[url] = time.monotonic()
        else:
            return (f"The database at `{redact(url)}` is not migrated to the current schema. "
                    "Run `mucode db upgrade`, then refresh this page.")
    except Exception as exc:  # noqa: BLE001 - shown to the user, never raised
        _store.clear()
        return (f"Cannot open the database at `{redact(url)}`: {exc}. "
                "Set `MUCODE_DATABASE_URL` (and run `mucode db upgrade`).")
    return None


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _query(url: str, name: str, args: tuple, kwargs: tuple) -> Any:
    return getattr(_store(url), name)(*args, **dict(kwargs))


def q(name: str, *args: Any, **kwargs: Any) -> Any:
    """A cached call of ``Store.<name>(*args, **kwargs)`` (keyed by database URL and arguments)."""
    return _query(database_url(), name, tuple(args), tuple(sorted(kwargs.items())))


@st.cache_data(ttl=FINISHED_TTL_S, show_spinner=False, max_entries=2000)
def _query_finished(url: str, name: str, args: tuple, kwargs: tuple, version: str) -> Any:
    return getattr(_store(url), name)(*args, **dict(kwargs))


def q_finished(name: str, version: str, *args: Any, **kwargs: Any) -> Any:
    """Like ``q`` for results that cannot change any more (cached an hour, keyed by ``version``)."""
    return _query_finished(database_url(), name, tuple(args), tuple(sorted(kwargs.items())), version)


def eval_turn_success(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-turn success of these evaluations: finished ones from the long cache, the others fresh."""
    done = sorted(e["id"] for e in evals if e.get("status") == "done" and e.get("finished_at") is not None)
    live = sorted(e["id"] for e in evals if e["id"] not in set(done))
    out: list[dict[str, Any]] = []
    if done:
        stamp = max(str(e["finished_at"]) for e in evals if e["id"] in set(done))
        out += q_finished("dash_eval_turn_success", f"{len(done)}@{stamp}", evaluation_ids=tuple(done))
    if live:
        out += q("dash_eval_turn_success", evaluation_ids=tuple(live))
    return out


def eval_pair(e: dict[str, Any]) -> str:
    """``G1 · RM1``: the generator an evaluation searched and the verifier it was paired with (model names where
    they are not an experiment round's own)."""
    gen = e.get("generator_label") or e.get("generator") or "?"
    ver = e.get("verifier_label") or e.get("verifier")
    return f"{gen} · {ver}" if ver else str(gen)


def round_finished(r: dict[str, Any]) -> bool:
    return r.get("status") in ("done", "failed", "cancelled") and r.get("finished_at") is not None


def q_per_round(name: str, rounds: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    """``Store.<name>(round_ids=(id,), **kwargs)`` for each round, concatenated. A finished round's result
    is cached for an hour (keyed by its finish time), a running one's for ``CACHE_TTL_S``: while a run goes
    on, a refresh recomputes only the rounds that can still change."""
    out: list[dict[str, Any]] = []
    url = database_url()
    kw = tuple(sorted(kwargs.items()))
    for r in rounds:
        args_kw = kw + (("round_ids", (r["id"],)),)
        if round_finished(r):
            out.extend(_query_finished(url, name, (), args_kw, f"{r['status']}@{r['finished_at']}"))
        else:
            out.extend(_query(url, name, (), args_kw))
    return out


def df(rows: list[dict[str, Any]] | None, columns: list[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows or [])
    if columns is not None:
        for c in columns:
            if c not in frame:
                frame[c] = None
        frame = frame[columns]
    return frame


# -- layout ---------------------------------------------------------------------------------------
def sidebar() -> None:
    """Database, experiment picker (shared by every page) and a refresh button."""
    from app.db.engine import redact

    with st.sidebar:
        st.caption(f"Database: `{redact(database_url())}`")
        if st.button("Refresh data", help=f"Query results are cached for {CACHE_TTL_S} s."):
            st.cache_data.clear()
            st.rerun()


def experiment_picker() -> int | None:
    """The experiment every page is about (sidebar; rendered by home.py on every run so the choice survives
    page switches; ``?experiment=NAME`` preselects). None = all experiments."""
    exps = q("dash_experiments")
    if not exps:
        st.session_state["experiment_id"] = None
        return None
    names = [e["name"] for e in exps]
    options = names + ["(all experiments)"]
    wanted = st.query_params.get("experiment")
    if wanted in names and st.session_state.get("_experiment_from_url") != wanted:
        st.session_state["experiment"] = wanted  # a link chose it (once: the user may change it afterwards)
        st.session_state["_experiment_from_url"] = wanted
    elif st.session_state.get("experiment") not in options:
        st.session_state["experiment"] = names[0]
    with st.sidebar:
        choice = st.selectbox("Experiment", options, key="experiment",
                              help="Newest first. Pages show this experiment's rounds and evaluations.")
    exp_id = next((e["id"] for e in exps if e["name"] == choice), None)
    st.session_state["experiment_id"] = exp_id
    return exp_id


def current_experiment() -> int | None:
    return st.session_state.get("experiment_id")


def rounds_window_picker() -> None:
    """How many recent rounds the per-candidate sections cover (sidebar, shared by the pages)."""
    if st.session_state.get("rounds_window") not in ROUND_WINDOWS:
        st.session_state["rounds_window"] = "last 5 rounds"
    with st.sidebar:
        st.selectbox("Candidate-level sections cover", list(ROUND_WINDOWS), key="rounds_window",
                     help="Error types, the public-vs-private gap and verifier disagreement scan every candidate "
                          "of a round; on a long run, keep this to the recent rounds. Charts from evaluations and "
                          "trajectories always cover every round.")


def window_rounds(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most recent rounds of each experiment, as chosen by the sidebar's window."""
    n = ROUND_WINDOWS.get(st.session_state.get("rounds_window", "last 5 rounds"), 5)
    if n is None:
        return list(rounds)
    last: dict[Any, int] = {}
    for r in rounds:
        last[r["experiment_id"]] = max(last.get(r["experiment_id"], -1), r["round"])
    return [r for r in rounds if r["round"] > last[r["experiment_id"]] - n]


def footer() -> None:
    from app.db.engine import redact

    st.divider()
    st.caption(f"{FOOTER_MARKER} {redact(database_url())} · data cached {CACHE_TTL_S} s")


def pager(key: str, total: int, page_size: int = PAGE_SIZE) -> int:
    """Page controls for a list of ``total`` rows; returns the OFFSET of the current page."""
    pages = max(1, math.ceil(total / page_size))
    if pages <= 1:
        return 0
    page = st.pagination(pages, key=key)
    st.caption(f"page {page} of {pages} · {total} rows")
    return (int(page) - 1) * page_size


def link(page: str, label: str, **params: Any) -> None:
    """A link to another page of the app with query parameters (``page``: a key of ``PAGES``)."""
    target = PAGES.get(page)
    if target is None:
        st.caption(label)
        return
    st.page_link(target, label=label, query_params={k: str(v) for k, v in params.items() if v is not None})


# -- formatting -----------------------------------------------------------------------------------
def pct(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100.0 * x:.{digits}f}%"


def mark(v: bool | None) -> str:
    """A verdict in a table cell (plain glyphs that every font has)."""
    return "–" if v is None else ("✓" if v else "✗")


def badge(v: bool | None) -> str:
    """A verdict in markdown text."""
    return "–" if v is None else (":green[**✓ pass**]" if v else ":red[**✗ fail**]")


def seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "–"
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def find_metric(obj: Any, names: tuple[str, ...]) -> Any:
    """The first value under a key in ``names`` anywhere in a nested metrics dict (breadth first)."""
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            for n in names:
                if n in cur and not isinstance(cur[n], (dict, list)):
                    return cur[n]
            queue.extend(v for v in cur.values() if isinstance(v, (dict, list)))
        elif isinstance(cur, list):
            queue.extend(v for v in cur if isinstance(v, (dict, list)))
    return None


def metric_parts(metrics: Any) -> dict[str, Any]:
    """The measured parts of a verifier's stored metrics: ``{"holdout": {...}, "mbpp_test": {...}}`` from
    ``metrics["eval"]`` (trainers/verifier/evaluate.py), else the whole dict as one part."""
    metrics = metrics if isinstance(metrics, dict) else {}
    ev = metrics.get("eval") if isinstance(metrics.get("eval"), dict) else None
    if ev:
        parts = {k: v for k, v in ev.items() if isinstance(v, dict)}
        if parts:
            return parts
        if "holdout" in ev or "mbpp_test" in ev:  # evaluate.py's layout, nothing measured (no hold-out, no test)
            return {"–": {}}
        return {"eval": ev}
    return {"stored": metrics} if metrics else {"–": {}}


def find_key(obj: Any, names: tuple[str, ...]) -> Any:
    """The first value (of any type) under a key in ``names`` anywhere in a nested dict."""
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            for n in names:
                if n in cur:
                    return cur[n]
            queue.extend(v for v in cur.values() if isinstance(v, dict))
    return None


def step_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten ``rounds.steps`` (``{step: {state, started_at, finished_at, seconds|duration_s, error}}``)."""
    out = []
    for r in rounds:
        steps = r.get("steps") or {}
        if not isinstance(steps, dict):
            continue
        for order, (name, rec) in enumerate(steps.items()):
            rec = rec if isinstance(rec, dict) else {"state": rec}
            secs = None
            for k in ("seconds", "duration_s", "duration_seconds", "elapsed_s", "elapsed"):
                if isinstance(rec.get(k), (int, float)):
                    secs = float(rec[k])
                    break
            if secs is None and rec.get("started_at") and rec.get("finished_at"):
                try:
                    secs = (pd.Timestamp(rec["finished_at"]) - pd.Timestamp(rec["started_at"])).total_seconds()
                except (ValueError, TypeError):
                    secs = None
            out.append({"round": r.get("round"), "step": name, "order": order,
                        "state": rec.get("state") or rec.get("status"), "seconds": secs,
                        "started_at": rec.get("started_at"), "finished_at": rec.get("finished_at"),
                        "error": rec.get("error")})
    return out


# -- comparison: per-problem scores and their intervals ------------------------------------------------
# Bootstrap resamples on the dashboard (interactive; `mucode report` uses app.stats' default for tables).
DASH_RESAMPLES = 2000


def eval_setting(e: dict[str, Any]) -> str:
    """``greedy (T=0)`` / ``BoN N=5 C=10 pt+lv``: the evaluation setting, as the report names its columns."""
    from app.evaluation import label

    return label(e["mode"], e.get("selector"), int(e.get("num_candidates") or 1), int(e.get("num_chains") or 1))


def _eval_version(e: dict[str, Any]) -> str | None:
    """A finished evaluation's cache version (None while it can still change)."""
    if e.get("status") == "done" and e.get("finished_at") is not None:
        return f"{e['id']}@{e['finished_at']}"
    return None


def eval_problem_scores(evals: list[dict[str, Any]]) -> dict[int, dict[int, list[float]]]:
    """Per evaluation, per problem: its true success at turns 1..max_turns (the share of its chains solved by
    turn t) from ``evaluation_results``; a finished evaluation's rows come from the long cache."""
    rows: list[dict[str, Any]] = []
    for e in evals:
        version = _eval_version(e)
        if version is not None:
            rows += q_finished("dash_eval_problem_outcomes", version, evaluation_ids=(e["id"],))
        else:
            rows += q("dash_eval_problem_outcomes", evaluation_ids=(e["id"],))
    turns = {e["id"]: max(1, int(e.get("max_turns") or 1)) for e in evals}
    hist: dict[int, dict[int, list[tuple[int | None, int]]]] = {}
    for r in rows:
        hist.setdefault(r["evaluation_id"], {}).setdefault(r["problem_id"], []).append(
            (r["first_solved"], int(r["chains"])))
    out: dict[int, dict[int, list[float]]] = {}
    for ev_id, problems in hist.items():
        t_max = turns.get(ev_id, 1)
        out[ev_id] = {
            pid: [sum(n for f, n in h if f is not None and f <= t) / sum(n for _, n in h) for t in range(1, t_max + 1)]
            for pid, h in problems.items()
        }
    return out


@st.cache_data(ttl=FINISHED_TTL_S, show_spinner=False, max_entries=5000)
def _interval(key: tuple, _values: tuple[float, ...], resamples: int) -> dict[str, float]:
    from app.stats import bootstrap_ci

    return bootstrap_ci(_values, resamples=resamples).as_dict()


def interval(values: list[float], key: tuple | None, resamples: int = DASH_RESAMPLES) -> dict[str, float]:
    """The mean of per-problem ``values`` and its 95% percentile-bootstrap interval (app.stats); cached under
    ``key`` when the values cannot change any more (None: computed every time)."""
    if key is None:
        from app.stats import bootstrap_ci

        return bootstrap_ci(values, resamples=resamples).as_dict()
    return _interval((database_url(),) + tuple(key), tuple(values), resamples)
