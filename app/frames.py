"""An experiment's data as pandas DataFrames, for notebooks.

    from app import frames
    df = frames.candidates("my-experiment")               # the configured store (MUCODE_DATABASE_URL)
    tables = frames.load_all("my-experiment", store=Store("postgresql+psycopg://..."))
    frames.evaluation_results("my-experiment").groupby("evaluation_id").solved.mean()

Tables (one function each, all restricted to the experiment: its rounds' training rollouts and its
evaluations' chains; ids join them):

- ``rollouts``: a training trajectory (``round_id``) or an evaluation chain (``evaluation_id``); problem,
  dataset, split, ``sample_index`` (rollout m, or chain c), number of turns, final label.
- ``turns``: ``rollout_id``, ``turn`` (1-based), the feedback carried to the next turn, the exact ``messages``.
- ``candidates``: ``turn_id``, ``rollout_id``, ``turn``, ``sample_index`` (n of N), ``chosen``, public/private
  verdicts, tokens, the response and the extracted code.
- ``executions``: every run of a candidate's code on its problem's public or private suite (shared by all
  candidates with the same code: join on ``code_hash`` and ``problem_id``), status, feedback, per-test outcomes.
- ``verifier_scores``: ``candidate_id``, ``verifier_id`` and name, ``score``.
- ``evaluations``: one row per evaluation (generator, verifier, dataset, mode, selector, N, C, T, the stored
  metrics as JSON).
- ``evaluation_results``: per evaluation, problem, chain and turn: the pick and ``solved`` (cumulative).

``text=False`` leaves out the long text columns (messages, responses, code, execution output). JSON columns
(messages, sampling, tests, config, metrics) are JSON strings. Columns use pandas' nullable types (a verdict
not known yet is ``<NA>``). The queries are the store's (``Store.frame_rows``); pandas comes with the
``dashboard`` extra, Parquet files need pyarrow (the same extra).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.store.report import FRAME_TABLES

EXPORT_FORMATS = ("parquet", "csv")


def _pandas():
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        from app.errors import MucodeError

        raise MucodeError("app.frames needs pandas: pip install 'mucode[dashboard]'") from exc
    return pd


def _store(store: Any):
    if store is not None:
        return store
    from app.store import Store

    return Store.from_settings()


def _experiment_id(store, experiment: int | str) -> int:
    return store.get_experiment(experiment).id


def load(experiment: int | str, table: str, *, store: Any = None, text: bool = True):
    """One table of the experiment (name or id) as a DataFrame; ``table`` is one of ``FRAME_TABLES``."""
    from app.errors import ConfigError

    pd = _pandas()
    if table not in FRAME_TABLES:
        raise ConfigError(f"unknown table {table!r} (one of: {', '.join(FRAME_TABLES)})")
    st = _store(store)
    cols, rows = st.frame_rows(table, _experiment_id(st, experiment), text=text)
    df = pd.DataFrame.from_records(rows, columns=cols)
    return df.convert_dtypes(dtype_backend="numpy_nullable")


def load_all(experiment: int | str, *, store: Any = None, text: bool = True,
             tables: list[str] | tuple[str, ...] = FRAME_TABLES) -> dict[str, Any]:
    """``{table: DataFrame}`` for ``tables`` (default: every table)."""
    st = _store(store)
    return {t: load(experiment, t, store=st, text=text) for t in tables}


def rollouts(experiment: int | str, *, store: Any = None):
    return load(experiment, "rollouts", store=store)


def turns(experiment: int | str, *, store: Any = None, text: bool = True):
    return load(experiment, "turns", store=store, text=text)


def candidates(experiment: int | str, *, store: Any = None, text: bool = True):
    return load(experiment, "candidates", store=store, text=text)


def executions(experiment: int | str, *, store: Any = None, text: bool = True):
    return load(experiment, "executions", store=store, text=text)


def verifier_scores(experiment: int | str, *, store: Any = None):
    return load(experiment, "verifier_scores", store=store)


def evaluations(experiment: int | str, *, store: Any = None):
    return load(experiment, "evaluations", store=store)


def evaluation_results(experiment: int | str, *, store: Any = None):
    return load(experiment, "evaluation_results", store=store)


def export(experiment: int | str, out_dir: str | Path, *, fmt: str = "parquet", tables: Any = None,
           text: bool = True, store: Any = None) -> dict[str, tuple[Path, int]]:
    """Write each table to ``out_dir/<table>.<fmt>``; returns ``{table: (path, rows)}``. Each file is written
    to a temporary name and renamed, so a failed export never leaves a half-written file behind."""
    from app.errors import ConfigError

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r} (one of: {', '.join(EXPORT_FORMATS)})")
    chosen = list(tables) if tables else list(FRAME_TABLES)
    unknown = [t for t in chosen if t not in FRAME_TABLES]
    if unknown:
        raise ConfigError(f"unknown table(s) {', '.join(unknown)} (one of: {', '.join(FRAME_TABLES)})")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigError("Parquet export needs pyarrow: pip install 'mucode[dashboard]' (or --format csv)") \
                from exc
    st = _store(store)
    eid = _experiment_id(st, experiment)  # a missing experiment fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[Path, int]] = {}
    for table in chosen:
        df = load(eid, table, store=st, text=text)
        path = out / f"{table}.{fmt}"
        tmp = out / f".{table}.{fmt}.{os.getpid()}.tmp"
        try:
            if fmt == "parquet":
                df.to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        written[table] = (path, len(df))
    return written
