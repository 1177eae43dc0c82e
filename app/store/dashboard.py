"""Store queries: read-only aggregates for the dashboard.

Every query the Streamlit dashboard runs lives here. Aggregates are computed in SQL (GROUP BY, window
functions) so the dashboard never pulls a table into Python; lists are paged (LIMIT/OFFSET where the list is
small or bounded, keyset ``id > :after`` where it can be long). Each method opens its own read transaction and
returns plain Python values (lists of dicts), so the dashboard can cache them. The SQL is portable between
PostgreSQL and SQLite (>= 3.25 for window functions); the few dialect-specific pieces (durations, the
regular expression that extracts an exception type) go through small helpers.

Conventions the queries rely on (docs/design.md, app/db/models.py):
- a candidate's oracle label is ``candidates.private_passed`` (NULL until executed);
- an execution of a candidate's code for problem P and suite kind K has ``suite_hash`` = P's
  ``public_suite_hash`` / ``private_suite_hash`` and ``suite_kind`` = K;
- ``evaluation_results.solved`` is cumulative per chain ("true success" at turn t, docs/method.md §7);
- training rollouts stop at the first public pass, so a training trajectory "solved by turn t" is one that
  finished at turn <= t with ``final_label`` true.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, text

# Execution statuses that are limits or infrastructure, not an exception raised by the candidate's code.
LIMIT_STATUSES = ("timeout", "memory", "output_limit", "sandbox_error")
# The exception type in sanitized feedback text: "NameError: name 'x' is not defined", "AssertionError", ...
ERROR_TYPE_PATTERN = r"([A-Z][A-Za-z0-9_]*(?:Error|Exception|Exit|Interrupt|Iteration))"
_ERROR_TYPE_RE = re.compile(ERROR_TYPE_PATTERN)


def _error_type_py(feedback: str | None) -> str | None:
    if not feedback:
        return None
    found = _ERROR_TYPE_RE.search(feedback)
    return found.group(1) if found else None


def _sigmoid_py(x: float | None) -> float | None:
    if x is None:
        return None
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# Result columns decoded uniformly on both backends (SQLite hands back JSON as text, booleans as 0/1 and
# timestamps as text; Postgres hands back Decimal for SUM/AVG).
_JSON_COLS = {"steps", "metrics", "config", "messages", "tests", "sampling", "public_tests", "private_tests",
              "shown_tests"}
_BOOL_COLS = {"final_label", "public_passed", "private_passed", "chosen", "passed", "rollout_label",
              "target_label", "final"}
_TIME_COLS = {"created_at", "started_at", "finished_at", "queued_at", "oldest_queued", "last_finished",
              "loaded_at"}


def _norm(key: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if key in _JSON_COLS and isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if key in _BOOL_COLS and isinstance(value, int):
        return bool(value)
    if key in _TIME_COLS and isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class DashboardMixin:
    """Read-only queries behind every page of the dashboard (names start with ``dash_``)."""

    DASH_WORK_MEM = "64MB"

    # -- plumbing ---------------------------------------------------------------------------------
    def _dash_rows(self, sql: str, params: dict[str, Any] | None = None, expanding: Iterable[str] = (),
                   *, error_type: bool = False, sigmoid: bool = False) -> list[dict[str, Any]]:
        stmt = text(sql)
        expanding = set(expanding) | {k for k, v in (params or {}).items() if isinstance(v, (list, tuple))}
        if expanding:
            stmt = stmt.bindparams(*(bindparam(n, expanding=True) for n in expanding))
        with self.session() as s:  # type: ignore[attr-defined]
            if self.is_postgres:  # type: ignore[attr-defined]
                # Analytical reads: sort and hash in memory, skip JIT compilation (it costs more than it saves
                # on these sub-second queries) and price index lookups as on a cached/SSD database, so that a
                # round's candidates are reached through the indexes instead of scanning every candidate.
                # SET LOCAL ends with the transaction.
                s.execute(text(f"SET LOCAL work_mem = '{self.DASH_WORK_MEM}'"))
                s.execute(text("SET LOCAL jit = off"))
                s.execute(text("SET LOCAL random_page_cost = 1.1"))
            elif error_type or sigmoid:
                dbapi = s.connection().connection.driver_connection
                if error_type:
                    dbapi.create_function("mucode_error_type", 1, _error_type_py, deterministic=True)
                if sigmoid:  # SQLite builds without the math functions have no EXP
                    dbapi.create_function("mucode_sigmoid", 1, _sigmoid_py, deterministic=True)
            return [{k: _norm(k, v) for k, v in r.items()} for r in s.execute(stmt, params or {}).mappings()]

    def _dash_one(self, sql: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any] | None:
        rows = self._dash_rows(sql, params, **kw)
        return rows[0] if rows else None

    def _dash_seconds(self, end: str, start: str) -> str:
        """SQL for the seconds between two timestamp expressions."""
        if self.is_postgres:  # type: ignore[attr-defined]
            return f"EXTRACT(EPOCH FROM ({end} - {start}))"
        return f"((julianday({end}) - julianday({start})) * 86400.0)"

    def _dash_error_type(self, status: str, feedback: str) -> str:
        """SQL for the error class of an execution: 'passed', a limit status, or the exception type."""
        if self.is_postgres:  # type: ignore[attr-defined]
            pattern = ERROR_TYPE_PATTERN.replace(":", "\\:")  # a bare ":name" is a bind parameter in text()
            extract = f"substring({feedback} from '{pattern}')"
        else:
            extract = f"mucode_error_type({feedback})"
        limits = ", ".join(f"'{x}'" for x in LIMIT_STATUSES)
        return (
            f"CASE WHEN {status} = 'passed' THEN 'passed' WHEN {status} IN ({limits}) THEN {status} "
            f"ELSE COALESCE({extract}, {status}) END"
        )

    @staticmethod
    def _dash_scope(experiment_id: int | None, alias: str = "rd",
                    round_ids: Sequence[int] | None = None) -> tuple[str, dict[str, Any]]:
        """SQL (`` AND ...``) restricting rounds ``alias`` to an experiment and/or a set of round ids."""
        sql, params = "", {}
        if experiment_id is not None:
            sql += f" AND {alias}.experiment_id = :exp"
            params["exp"] = int(experiment_id)
        if round_ids is not None:
            ids = [int(r) for r in round_ids] or [-1]
            sql += f" AND {alias}.id IN :rids"
            params["rids"] = ids
        return sql, params

    # -- overview ---------------------------------------------------------------------------------
    def dash_summary(self, *, exact_below: int = 200_000) -> dict[str, int]:
        """Row counts of the main tables (the dashboard's 'is there anything yet' check).

        On Postgres a table whose planner estimate (``pg_class.reltuples``, kept by autovacuum/ANALYZE) is
        above ``exact_below`` rows reports that estimate instead of a COUNT(*) scan; the keys of such
        estimates are listed under ``"_estimated"``.
        """
        tables = ("problems", "experiments", "rounds", "rollouts", "turns", "candidates", "executions",
                  "verifier_scores", "evaluations", "evaluation_results", "sft_examples", "jobs")
        estimates: dict[str, int] = {}
        if self.is_postgres:  # type: ignore[attr-defined]
            for r in self._dash_rows(
                "SELECT relname, reltuples FROM pg_class WHERE relkind = 'r' AND relname IN :names "
                "AND relnamespace = to_regnamespace(current_schema())::oid",
                {"names": list(tables)}, ("names",),
            ):
                if r["reltuples"] is not None and r["reltuples"] > exact_below:
                    estimates[r["relname"]] = int(r["reltuples"])
        exact = [t for t in tables if t not in estimates]
        row = self._dash_one("SELECT " + ", ".join(f"(SELECT COUNT(*) FROM {t}) AS {t}" for t in exact)) or {}
        out: dict[str, Any] = {k: int(v or 0) for k, v in row.items()}
        out.update(estimates)
        out["_estimated"] = sorted(estimates)  # type: ignore[assignment]
        return out

    def dash_experiments(self) -> list[dict[str, Any]]:
        return self._dash_rows(
            """
            SELECT e.id, e.name, e.method, e.base_model, e.created_at,
                   COUNT(rd.id) AS rounds,
                   SUM(CASE WHEN rd.status = 'done' THEN 1 ELSE 0 END) AS rounds_done,
                   MAX(rd."index") AS last_round
            FROM experiments e LEFT JOIN rounds rd ON rd.experiment_id = e.id
            GROUP BY e.id, e.name, e.method, e.base_model, e.created_at
            ORDER BY e.created_at DESC, e.id DESC
            """
        )

    def dash_rounds(self, experiment_id: int | None = None) -> list[dict[str, Any]]:
        """Rounds with their models, step records and the outcome of their training rollouts
        (``rollouts_false_public``: finished on a public pass that fails the private tests)."""
        where, params = self._dash_scope(experiment_id)
        secs = self._dash_seconds("rd.finished_at", "rd.started_at")
        return self._dash_rows(
            f"""
            WITH ro AS (
                SELECT round_id,
                       COUNT(*) AS rollouts,
                       SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END) AS rollouts_done,
                       SUM(CASE WHEN final_label THEN 1 ELSE 0 END) AS rollouts_solved,
                       SUM(CASE WHEN public_passed THEN 1 ELSE 0 END) AS rollouts_public,
                       SUM(CASE WHEN public_passed AND NOT final_label THEN 1 ELSE 0 END) AS rollouts_false_public,
                       COUNT(DISTINCT problem_id) AS problems,
                       SUM(num_turns) AS turns
                FROM rollouts WHERE round_id IS NOT NULL GROUP BY round_id
            )
            SELECT rd.id, rd.experiment_id, ex.name AS experiment, rd."index" AS round, rd.status, rd.final,
                   rd.created_at, rd.started_at, rd.finished_at, {secs} AS seconds, rd.error, rd.steps,
                   g.name AS generator, vi.name AS verifier_in, vo.name AS verifier_out,
                   gout.name AS generator_out,
                   COALESCE(ro.rollouts, 0) AS rollouts, COALESCE(ro.rollouts_done, 0) AS rollouts_done,
                   COALESCE(ro.rollouts_solved, 0) AS rollouts_solved,
                   COALESCE(ro.rollouts_public, 0) AS rollouts_public,
                   COALESCE(ro.rollouts_false_public, 0) AS rollouts_false_public,
                   COALESCE(ro.problems, 0) AS problems, COALESCE(ro.turns, 0) AS turns
            FROM rounds rd
            JOIN experiments ex ON ex.id = rd.experiment_id
            LEFT JOIN model_versions g ON g.id = rd.generator_id
            LEFT JOIN model_versions vi ON vi.id = rd.verifier_in_id
            LEFT JOIN model_versions vo ON vo.id = rd.verifier_out_id
            LEFT JOIN model_versions gout ON gout.id = rd.generator_out_id
            LEFT JOIN ro ON ro.round_id = rd.id
            WHERE 1 = 1 {where}
            ORDER BY ex.name, rd."index"
            """,
            params,
        )

    def dash_round_candidates(self, experiment_id: int | None = None,
                              round_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Per round, the labels of its training candidates: the public-vs-private gap.

        ``public_only`` counts candidates that pass the public tests but fail the private ones (a false
        public pass ends a trajectory with a wrong answer); ``private_only`` the reverse. The aggregate runs
        over the training rollouts of the experiment's rounds only (evaluation chains are not scanned);
        ``round_ids`` restricts it further (the dashboard asks per round and caches finished rounds).
        """
        where, params = self._dash_scope(experiment_id, round_ids=round_ids)
        return self._dash_rows(
            f"""
            WITH agg AS (
                SELECT ro.round_id,
                       COUNT(*) AS candidates,
                       SUM(CASE WHEN c.private_passed IS NOT NULL THEN 1 ELSE 0 END) AS executed,
                       SUM(CASE WHEN c.public_passed THEN 1 ELSE 0 END) AS public_pass,
                       SUM(CASE WHEN c.private_passed THEN 1 ELSE 0 END) AS private_pass,
                       SUM(CASE WHEN c.public_passed AND NOT c.private_passed THEN 1 ELSE 0 END) AS public_only,
                       SUM(CASE WHEN c.private_passed AND NOT c.public_passed THEN 1 ELSE 0 END) AS private_only,
                       SUM(CASE WHEN c.chosen THEN 1 ELSE 0 END) AS chosen_count
                FROM rollouts ro
                JOIN turns t ON t.rollout_id = ro.id
                JOIN candidates c ON c.turn_id = t.id
                WHERE ro.round_id IN (SELECT rd.id FROM rounds rd WHERE 1 = 1 {where})
                GROUP BY ro.round_id
            )
            SELECT agg.*, rd."index" AS round, ex.name AS experiment
            FROM agg JOIN rounds rd ON rd.id = agg.round_id JOIN experiments ex ON ex.id = rd.experiment_id
            ORDER BY ex.name, rd."index"
            """,
            params,
        )

    def dash_train_turn_success(self, experiment_id: int | None = None) -> list[dict[str, Any]]:
        """Per round and turn t: training trajectories solved / public-passed by turn t (cumulative).

        A rollout is solved by turn t when it finished at a turn <= t with a private pass. ``reached``
        counts rollouts that got to turn t, so ``ended_solved / reached`` is the repair rate at that turn.
        The cumulative sums are window functions; turns at which no rollout ended are missing and carry
        the previous value forward.
        """
        where, params = self._dash_scope(experiment_id)
        return self._dash_rows(
            f"""
            WITH h AS (
                SELECT ro.round_id, rd."index" AS round, ro.num_turns AS turn,
                       COUNT(*) AS ended,
                       SUM(CASE WHEN ro.final_label THEN 1 ELSE 0 END) AS ended_solved,
                       SUM(CASE WHEN ro.public_passed THEN 1 ELSE 0 END) AS ended_public
                FROM rollouts ro JOIN rounds rd ON rd.id = ro.round_id
                WHERE ro.status = 'done' AND ro.num_turns > 0 {where}
                GROUP BY ro.round_id, rd."index", ro.num_turns
            )
            SELECT round_id, round, turn, ended, ended_solved, ended_public,
                   SUM(ended) OVER (PARTITION BY round_id) AS total,
                   SUM(ended) OVER (PARTITION BY round_id ORDER BY turn DESC
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS reached,
                   SUM(ended_solved) OVER (PARTITION BY round_id ORDER BY turn
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS solved_by,
                   SUM(ended_public) OVER (PARTITION BY round_id ORDER BY turn
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS public_by
            FROM h ORDER BY round, turn
            """,
            params,
        )

    def dash_evaluations(self, experiment_id: int | None = None) -> list[dict[str, Any]]:
        """Evaluations (of an experiment's rounds, or all) with their round and models. ``generator_label`` /
        ``verifier_label`` name the pair as ``G<j>`` / ``RM<j>`` where the models are the experiment's own (the
        round's G_k or G_{k+1}; the verifier trained by round j), NULL otherwise."""
        where = ""
        params: dict[str, Any] = {}
        if experiment_id is not None:
            where = " AND (ev.experiment_id = :exp OR rd.experiment_id = :exp)"
            params["exp"] = int(experiment_id)
        return self._dash_rows(
            f"""
            SELECT ev.id, ev.name, ev.dataset, ev.split, ev.mode, ev.selector, ev.num_candidates,
                   ev.num_chains, ev.max_turns, ev.status, ev.created_at, ev.finished_at, ev.metrics,
                   ev.round_id, rd."index" AS round, COALESCE(ex.name, ex2.name) AS experiment,
                   g.name AS generator, v.name AS verifier,
                   CASE WHEN ev.generator_id = rd.generator_id THEN 'G' || rd."index"
                        WHEN ev.generator_id = rd.generator_out_id THEN 'G' || (rd."index" + 1) END
                       AS generator_label,
                   CASE WHEN vr.experiment_id = COALESCE(rd.experiment_id, ev.experiment_id)
                        THEN 'RM' || vr."index" END AS verifier_label
            FROM evaluations ev
            LEFT JOIN rounds rd ON rd.id = ev.round_id
            LEFT JOIN experiments ex ON ex.id = rd.experiment_id
            LEFT JOIN experiments ex2 ON ex2.id = ev.experiment_id
            LEFT JOIN model_versions g ON g.id = ev.generator_id
            LEFT JOIN model_versions v ON v.id = ev.verifier_id
            LEFT JOIN rounds vr ON vr.id = v.round_id
            WHERE 1 = 1 {where}
            ORDER BY rd."index", ev.dataset, ev.mode, ev.id
            """,
            params,
        )

    def dash_eval_turn_success(self, experiment_id: int | None = None,
                               evaluation_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Per evaluation and turn t (1..max_turns): docs/method.md §7 metrics from ``evaluation_results``.

        - ``true_success``: share of (problem, chain) whose cumulative ``solved`` is true at turn <= t;
        - ``public_success``: share of chains whose pick passed the public tests at some turn <= t;
        - ``any_success``: share of problems that at least one chain solved by turn t.
        A chain that stopped early keeps its outcome for the later turns. ``evaluation_ids`` restricts the
        evaluations (the dashboard caches finished ones for longer).
        """
        where = ""
        params: dict[str, Any] = {}
        if evaluation_ids is not None:
            where += " AND ev.id IN :evids"
            params["evids"] = [int(e) for e in evaluation_ids] or [-1]
        if experiment_id is not None:
            where += (" AND (ev.experiment_id = :exp OR ev.round_id IN "
                      "(SELECT id FROM rounds WHERE experiment_id = :exp))")
            params["exp"] = int(experiment_id)
        return self._dash_rows(
            f"""
            WITH RECURSIVE tn(t) AS (
                SELECT 1 UNION ALL
                SELECT t + 1 FROM tn WHERE t < (SELECT COALESCE(MAX(max_turns), 1) FROM evaluations)
            ),
            ev AS (SELECT ev.id, ev.max_turns FROM evaluations ev WHERE 1 = 1 {where}),
            chains AS (
                SELECT er.evaluation_id, er.problem_id, er.chain_index,
                       MIN(CASE WHEN er.solved THEN er.turn_index END) AS first_solved,
                       MIN(CASE WHEN er.public_passed THEN er.turn_index END) AS first_public
                FROM evaluation_results er
                WHERE er.evaluation_id IN (SELECT id FROM ev)
                GROUP BY er.evaluation_id, er.problem_id, er.chain_index
            ),
            -- histograms of "first turn solved / public-passed" (a few rows per evaluation) ...
            hc AS (
                SELECT evaluation_id, first_solved, first_public, COUNT(*) AS n
                FROM chains GROUP BY evaluation_id, first_solved, first_public
            ),
            hp AS (
                SELECT evaluation_id, first_solved, COUNT(*) AS n
                FROM (SELECT evaluation_id, problem_id, MIN(first_solved) AS first_solved
                      FROM chains GROUP BY evaluation_id, problem_id) per_problem
                GROUP BY evaluation_id, first_solved
            ),
            -- ... made cumulative over turns 1..max_turns
            c AS (
                SELECT hc.evaluation_id, tn.t, SUM(hc.n) AS chains,
                       SUM(CASE WHEN hc.first_solved <= tn.t THEN hc.n ELSE 0 END) AS solved,
                       SUM(CASE WHEN hc.first_public <= tn.t THEN hc.n ELSE 0 END) AS public
                FROM hc JOIN ev ON ev.id = hc.evaluation_id
                JOIN tn ON tn.t <= COALESCE(ev.max_turns, 1)
                GROUP BY hc.evaluation_id, tn.t
            ),
            p AS (
                SELECT hp.evaluation_id, tn.t, SUM(hp.n) AS problems,
                       SUM(CASE WHEN hp.first_solved <= tn.t THEN hp.n ELSE 0 END) AS any_solved
                FROM hp JOIN ev ON ev.id = hp.evaluation_id
                JOIN tn ON tn.t <= COALESCE(ev.max_turns, 1)
                GROUP BY hp.evaluation_id, tn.t
            )
            SELECT c.evaluation_id, c.t AS turn, c.chains, c.solved, c.public, p.problems, p.any_solved,
                   1.0 * c.solved / c.chains AS true_success,
                   1.0 * c.public / c.chains AS public_success,
                   1.0 * p.any_solved / p.problems AS any_success
            FROM c JOIN p ON p.evaluation_id = c.evaluation_id AND p.t = c.t
            ORDER BY c.evaluation_id, c.t
            """,
            params,
        )

    def dash_verifier_agreement(self, experiment_id: int | None = None, verifier_id: int | None = None,
                                source: str | None = None,
                                round_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """How often each verifier disagrees with the oracle, per verifier and round/evaluation.

        Within each problem (and round or evaluation), candidates are ranked by the verifier's score with
        one window (mid-ranks for ties: the mean of RANK() and the count of rows scoring at most as much).
        Then:
        - ``pair_accuracy``: share of (correct, incorrect) candidate pairs of the same problem that the
          verifier orders correctly (Mann-Whitney; ties count half); ``1 - pair_accuracy`` is the
          disagreement with the oracle;
        - ``top1_miss``: among problems with at least one correct candidate, the share where the highest
          score belongs to incorrect candidates only (the verifier would pick a wrong answer though a right
          one exists) - what hurts Best-of-N and relabeling.
        ``source``: ``train`` (training rollouts only), ``eval`` (evaluation chains only) or None (both).
        ``round_ids``: only those rounds (their training rollouts and their evaluations).
        """
        conds = []
        params: dict[str, Any] = {}
        if round_ids is not None:
            owners = []
            if source != "eval":
                owners.append("ro.round_id IN :rids")
            if source != "train":
                owners.append("ro.evaluation_id IN (SELECT e.id FROM evaluations e WHERE e.round_id IN :rids)")
            conds.append("(" + " OR ".join(owners) + ")")
            params["rids"] = [int(r) for r in round_ids] or [-1]
        if source == "train":
            conds.append("ro.round_id IS NOT NULL")
        elif source == "eval":
            conds.append("ro.evaluation_id IS NOT NULL")
        if verifier_id is not None:
            conds.append("vs.verifier_id = :vid")
            params["vid"] = int(verifier_id)
        if experiment_id is not None:
            owners = []
            if source != "eval":
                owners.append("ro.round_id IN (SELECT id FROM rounds WHERE experiment_id = :exp)")
            if source != "train":
                owners.append("ro.evaluation_id IN (SELECT e.id FROM evaluations e LEFT JOIN rounds r "
                              "ON r.id = e.round_id WHERE e.experiment_id = :exp OR r.experiment_id = :exp)")
            conds.append("(" + " OR ".join(owners) + ")")
            params["exp"] = int(experiment_id)
        where = (" AND " + " AND ".join(conds)) if conds else ""
        return self._dash_rows(
            f"""
            WITH scored AS (
                SELECT vs.verifier_id, ro.round_id, ro.evaluation_id, ro.problem_id,
                       CASE WHEN c.private_passed THEN 1 ELSE 0 END AS y, vs.score
                FROM rollouts ro
                JOIN turns t ON t.rollout_id = ro.id
                JOIN candidates c ON c.turn_id = t.id
                JOIN verifier_scores vs ON vs.candidate_id = c.id
                WHERE c.private_passed IS NOT NULL {where}
            ),
            ranked AS (
                SELECT verifier_id, round_id, evaluation_id, problem_id, y, score,
                       (RANK() OVER w + COUNT(*) OVER w) / 2.0 AS midrank
                FROM scored
                WINDOW w AS (PARTITION BY verifier_id, round_id, evaluation_id, problem_id ORDER BY score)
            ),
            per_problem AS (
                SELECT verifier_id, round_id, evaluation_id, problem_id,
                       COUNT(*) AS n, SUM(y) AS npos,
                       SUM(CASE WHEN y = 1 THEN midrank ELSE 0 END) AS rank_pos,
                       MAX(score) AS top_score, MAX(CASE WHEN y = 1 THEN score END) AS top_pos_score
                FROM ranked GROUP BY verifier_id, round_id, evaluation_id, problem_id
            )
            SELECT pp.verifier_id, mv.name AS verifier, pp.round_id, rd."index" AS round,
                   pp.evaluation_id, ev.name AS evaluation,
                   SUM(pp.n) AS candidates, COUNT(*) AS problems,
                   SUM(CASE WHEN pp.npos > 0 AND pp.npos < pp.n THEN 1 ELSE 0 END) AS mixed_problems,
                   SUM(1.0 * pp.npos * (pp.n - pp.npos)) AS pairs,
                   SUM(pp.rank_pos - pp.npos * (pp.npos + 1) / 2.0) AS pairs_right,
                   SUM(CASE WHEN pp.npos > 0 THEN 1 ELSE 0 END) AS solvable,
                   SUM(CASE WHEN pp.npos > 0 AND pp.top_pos_score < pp.top_score THEN 1 ELSE 0 END) AS top1_misses
            FROM per_problem pp
            JOIN model_versions mv ON mv.id = pp.verifier_id
            LEFT JOIN rounds rd ON rd.id = pp.round_id
            LEFT JOIN evaluations ev ON ev.id = pp.evaluation_id
            GROUP BY pp.verifier_id, mv.name, pp.round_id, rd."index", pp.evaluation_id, ev.name
            ORDER BY pp.verifier_id, rd."index", pp.evaluation_id
            """,
            params,
        )

    def dash_jobs_summary(self) -> list[dict[str, Any]]:
        """Queue and job state: per kind, queue and state, how many, how long, oldest waiting."""
        secs = self._dash_seconds("finished_at", "started_at")
        return self._dash_rows(
            f"""
            SELECT kind, queue, state, COUNT(*) AS jobs, MAX(attempts) AS max_attempts,
                   AVG({secs}) AS avg_seconds, MAX({secs}) AS max_seconds,
                   MIN(queued_at) AS oldest_queued, MAX(finished_at) AS last_finished
            FROM jobs GROUP BY kind, queue, state ORDER BY kind, state
            """
        )

    def dash_jobs(self, state: str | None = None, kind: str | None = None, *, limit: int = 50,
                  offset: int = 0) -> list[dict[str, Any]]:
        conds, params = [], {"limit": int(limit), "offset": int(offset)}
        if state:
            conds.append("j.state = :state")
            params["state"] = state
        if kind:
            conds.append("j.kind = :kind")
            params["kind"] = kind
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        secs = self._dash_seconds("j.finished_at", "j.started_at")
        return self._dash_rows(
            f"""
            SELECT j.id, j.kind, j.queue, j.state, j.attempts, j.round_id, j.evaluation_id, j.worker,
                   j.queued_at, j.started_at, j.finished_at, {secs} AS seconds, j.error
            FROM jobs j {where}
            ORDER BY j.id DESC LIMIT :limit OFFSET :offset
            """,
            params,
        )

    def dash_job_step_times(self, experiment_id: int | None = None) -> list[dict[str, Any]]:
        """Per round and job kind: how many jobs, their summed and wall-clock time."""
        where, params = self._dash_scope(experiment_id)
        secs = self._dash_seconds("j.finished_at", "j.started_at")
        wall = self._dash_seconds("MAX(j.finished_at)", "MIN(j.started_at)")
        return self._dash_rows(
            f"""
            SELECT j.round_id, rd."index" AS round, j.kind, COUNT(*) AS jobs,
                   SUM(CASE WHEN j.state = 'done' THEN 1 ELSE 0 END) AS done,
                   SUM(CASE WHEN j.state = 'failed' THEN 1 ELSE 0 END) AS failed,
                   SUM({secs}) AS busy_seconds, {wall} AS wall_seconds
            FROM jobs j JOIN rounds rd ON rd.id = j.round_id
            WHERE 1 = 1 {where}
            GROUP BY j.round_id, rd."index", j.kind ORDER BY rd."index", MIN(j.started_at)
            """,
            params,
        )

    # -- trajectories -----------------------------------------------------------------------------
    def _dash_problem_filter(self, query: str | None) -> tuple[str, dict[str, Any]]:
        q = (query or "").strip()
        if not q:
            return "", {}
        return (" AND (LOWER(p.external_id) LIKE :q ESCAPE '\\' OR LOWER(p.prompt) LIKE :q ESCAPE '\\')",
                {"q": f"%{_like_escape(q.lower())}%", "exact": q.lower()})

    def dash_count_problems(self, query: str | None = None, *, with_rollouts: bool = False) -> int:
        where, params = self._dash_problem_filter(query)
        if with_rollouts:
            where += " AND EXISTS (SELECT 1 FROM rollouts ro WHERE ro.problem_id = p.id)"
        row = self._dash_one(f"SELECT COUNT(*) AS n FROM problems p WHERE 1 = 1 {where}", params)
        return int(row["n"]) if row else 0

    def dash_search_problems(self, query: str | None = None, *, with_rollouts: bool = False,
                             limit: int = 25, offset: int = 0) -> list[dict[str, Any]]:
        """Problems whose id or text contains ``query`` (case-insensitive); an exact id comes first."""
        where, params = self._dash_problem_filter(query)
        if with_rollouts:
            where += " AND EXISTS (SELECT 1 FROM rollouts ro WHERE ro.problem_id = p.id)"
        params.update(limit=int(limit), offset=int(offset))
        exact = "CASE WHEN LOWER(p.external_id) = :exact THEN 0 ELSE 1 END, " if "exact" in params else ""
        return self._dash_rows(
            f"""
            WITH page AS (
                SELECT p.id, p.external_id, p.split, p.prompt, d.name AS dataset
                FROM problems p JOIN datasets d ON d.id = p.dataset_id
                WHERE 1 = 1 {where}
                ORDER BY {exact} d.name, LENGTH(p.external_id), p.external_id
                LIMIT :limit OFFSET :offset
            )
            SELECT page.id, page.external_id, page.dataset, page.split,
                   SUBSTR(page.prompt, 1, 160) AS prompt,
                   (SELECT COUNT(*) FROM rollouts ro WHERE ro.problem_id = page.id) AS rollouts,
                   (SELECT COUNT(*) FROM rollouts ro WHERE ro.problem_id = page.id AND ro.final_label)
                       AS solved_rollouts
            FROM page
            """,
            params,
        )

    def dash_problem(self, problem: int | str) -> dict[str, Any] | None:
        """One problem by id or external id."""
        col, val = ("p.id", int(problem)) if isinstance(problem, int) or str(problem).isdigit() else (
            "p.external_id", str(problem))
        return self._dash_one(
            f"""
            SELECT p.id, p.external_id, d.name AS dataset, p.split, p.prompt, p.entry_point,
                   p.public_tests, p.private_tests, p.shown_tests, p.setup_code, p.reference_solution
            FROM problems p JOIN datasets d ON d.id = p.dataset_id WHERE {col} = :v
            """,
            {"v": val},
        )

    def dash_problem_rollouts(self, problem_id: int, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """A problem's rollouts (training trajectories and evaluation chains), newest round first."""
        return self._dash_rows(
            """
            SELECT ro.id, ro.round_id, rd."index" AS round, ex.name AS experiment,
                   ro.evaluation_id, ev.name AS evaluation, ro.sample_index, ro.seed, ro.status,
                   ro.num_turns, ro.final_label, ro.public_passed, g.name AS generator,
                   (SELECT COUNT(*) FROM turns t JOIN candidates c ON c.turn_id = t.id
                    WHERE t.rollout_id = ro.id) AS candidates
            FROM rollouts ro
            LEFT JOIN rounds rd ON rd.id = ro.round_id
            LEFT JOIN experiments ex ON ex.id = rd.experiment_id
            LEFT JOIN evaluations ev ON ev.id = ro.evaluation_id
            LEFT JOIN model_versions g ON g.id = ro.generator_id
            WHERE ro.problem_id = :pid
            ORDER BY CASE WHEN ro.round_id IS NULL THEN 1 ELSE 0 END, ex.name, rd."index" DESC,
                     ro.evaluation_id DESC, ro.sample_index
            LIMIT :limit OFFSET :offset
            """,
            {"pid": int(problem_id), "limit": int(limit), "offset": int(offset)},
        )

    def dash_count_problem_rollouts(self, problem_id: int) -> int:
        row = self._dash_one("SELECT COUNT(*) AS n FROM rollouts WHERE problem_id = :pid", {"pid": int(problem_id)})
        return int(row["n"]) if row else 0

    def dash_rollout(self, rollout_id: int) -> dict[str, Any] | None:
        """One rollout with its turns, every candidate, their executions and verifier scores."""
        ro = self._dash_one(
            """
            SELECT ro.id, ro.problem_id, p.external_id, ro.round_id, rd."index" AS round,
                   ex.name AS experiment, ro.evaluation_id, ev.name AS evaluation, ro.sample_index,
                   ro.seed, ro.status, ro.num_turns, ro.final_label, ro.public_passed,
                   p.public_suite_hash, p.private_suite_hash
            FROM rollouts ro JOIN problems p ON p.id = ro.problem_id
            LEFT JOIN rounds rd ON rd.id = ro.round_id
            LEFT JOIN experiments ex ON ex.id = rd.experiment_id
            LEFT JOIN evaluations ev ON ev.id = ro.evaluation_id
            WHERE ro.id = :rid
            """,
            {"rid": int(rollout_id)},
        )
        if ro is None:
            return None
        turns = self._dash_rows(
            'SELECT id, "index" AS turn, messages, feedback, created_at FROM turns '
            'WHERE rollout_id = :rid ORDER BY "index"',
            {"rid": int(rollout_id)},
        )
        cands = self._dash_rows(
            """
            SELECT c.id, c.turn_id, c.sample_index, c.response, c.code, c.code_hash, c.prompt_tokens,
                   c.completion_tokens, c.finish_reason, c.sampling, c.chosen, c.public_passed,
                   c.private_passed
            FROM candidates c JOIN turns t ON t.id = c.turn_id
            WHERE t.rollout_id = :rid ORDER BY t."index", c.sample_index
            """,
            {"rid": int(rollout_id)},
        )
        scores = self._dash_rows(
            """
            SELECT vs.candidate_id, vs.verifier_id, mv.name AS verifier, vs.score
            FROM verifier_scores vs JOIN model_versions mv ON mv.id = vs.verifier_id
            JOIN candidates c ON c.id = vs.candidate_id JOIN turns t ON t.id = c.turn_id
            WHERE t.rollout_id = :rid ORDER BY vs.verifier_id
            """,
            {"rid": int(rollout_id)},
        )
        execs = self._dash_rows(
            """
            SELECT e.id, e.code_hash, e.suite_kind, e.sandbox_version, e.status, e.passed, e.tests,
                   e.feedback, e.stdout, e.stderr, e.duration_ms
            FROM executions e
            WHERE e.code_hash IN (SELECT c.code_hash FROM candidates c JOIN turns t ON t.id = c.turn_id
                                  WHERE t.rollout_id = :rid)
              AND ((e.suite_kind = 'public' AND e.suite_hash = :pub)
                   OR (e.suite_kind = 'private' AND e.suite_hash = :priv))
            ORDER BY e.id
            """,
            {"rid": int(rollout_id), "pub": ro["public_suite_hash"], "priv": ro["private_suite_hash"]},
        )
        by_code: dict[tuple[str, str], dict[str, Any]] = {}
        for e in execs:  # the newest execution per (code, kind) wins
            by_code[(e["code_hash"], e["suite_kind"])] = e
        by_cand: dict[int, list[dict[str, Any]]] = {}
        for sc in scores:
            by_cand.setdefault(sc["candidate_id"], []).append(sc)
        by_turn: dict[int, list[dict[str, Any]]] = {}
        for c in cands:
            c["scores"] = by_cand.get(c["id"], [])
            c["executions"] = {k: by_code.get((c["code_hash"], k)) for k in ("public", "private")}
            by_turn.setdefault(c["turn_id"], []).append(c)
        for t in turns:
            t["candidates"] = by_turn.get(t["id"], [])
        ro["turns"] = turns
        return ro

    # -- failures ---------------------------------------------------------------------------------
    def _dash_owner(self, source: str) -> tuple[str, str]:
        """(SQL of the round id a rollout counts under, extra join) for training or evaluation rollouts."""
        if source == "eval":
            return "ev.round_id", "JOIN evaluations ev ON ev.id = ro.evaluation_id"
        return "ro.round_id", ""

    def dash_error_types(self, experiment_id: int | None = None, *, suite: str = "private",
                         source: str = "train", round_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Per round: candidates by execution status and exception type on the ``suite`` tests.

        ``source`` is ``train`` (training rollouts of the round) or ``eval`` (the round's evaluation chains).
        Candidates are counted per (round, execution) with a hash join on the execution cache first; the
        exception type is then extracted once per distinct execution. The mean duration is weighted by
        candidates.
        """
        owner, join = self._dash_owner(source)
        where, params = self._dash_scope(experiment_id, round_ids=round_ids)
        params["kind"] = "public" if suite == "public" else "private"
        hash_col = "p.public_suite_hash" if suite == "public" else "p.private_suite_hash"
        if source == "eval":
            scope = f"ro.evaluation_id IN (SELECT ev.id FROM evaluations ev JOIN rounds rd ON rd.id = ev.round_id " \
                    f"WHERE 1 = 1 {where})"
        else:
            scope = f"ro.round_id IN (SELECT rd.id FROM rounds rd WHERE 1 = 1 {where})"
        etype = self._dash_error_type("e.status", "e.feedback")
        return self._dash_rows(
            f"""
            WITH g AS (
                SELECT {owner} AS round_id, e.id AS execution_id, COUNT(*) AS n
                FROM rollouts ro {join}
                JOIN turns t ON t.rollout_id = ro.id
                JOIN candidates c ON c.turn_id = t.id
                JOIN problems p ON p.id = ro.problem_id
                JOIN executions e ON e.code_hash = c.code_hash AND e.suite_hash = {hash_col}
                                  AND e.suite_kind = :kind
                WHERE {scope}
                GROUP BY {owner}, e.id
            ),
            typed AS (
                SELECT g.round_id, e.status, {etype} AS error_type, g.n, e.duration_ms
                FROM g JOIN executions e ON e.id = g.execution_id
            )
            SELECT typed.round_id, rd."index" AS round, typed.status, typed.error_type,
                   SUM(typed.n) AS candidates, COUNT(*) AS executions,
                   SUM(typed.n * typed.duration_ms) / SUM(typed.n) AS avg_ms, MAX(typed.duration_ms) AS max_ms
            FROM typed JOIN rounds rd ON rd.id = typed.round_id
            GROUP BY typed.round_id, rd."index", typed.status, typed.error_type
            ORDER BY rd."index", SUM(typed.n) DESC
            """,
            params,
            error_type=True,
        )

    def dash_failure_examples(self, round_id: int, error_type: str, *, suite: str = "private",
                              source: str = "train", after_id: int = 0, limit: int = 20) -> list[dict[str, Any]]:
        """Candidates of one round with one error class (keyset paging on candidate id)."""
        owner, join = self._dash_owner(source)
        hash_col = "p.public_suite_hash" if suite == "public" else "p.private_suite_hash"
        etype = self._dash_error_type("e.status", "e.feedback")
        return self._dash_rows(
            f"""
            SELECT c.id AS candidate_id, p.external_id, ro.problem_id, ro.id AS rollout_id,
                   t."index" AS turn, c.chosen, e.status, {etype} AS error_type, e.duration_ms,
                   SUBSTR(e.feedback, 1, 300) AS feedback
            FROM rollouts ro {join}
            JOIN turns t ON t.rollout_id = ro.id
            JOIN candidates c ON c.turn_id = t.id
            JOIN problems p ON p.id = ro.problem_id
            JOIN executions e ON e.code_hash = c.code_hash AND e.suite_hash = {hash_col} AND e.suite_kind = :kind
            WHERE {owner} = :rid AND c.id > :after AND {etype} = :etype
            ORDER BY c.id LIMIT :limit
            """,
            {"rid": int(round_id), "etype": error_type, "kind": "public" if suite == "public" else "private",
             "after": int(after_id), "limit": int(limit)},
            error_type=True,
        )

    def dash_unsolved_problems(self, experiment_id: int | None = None, *, source: str = "train",
                               limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Problems attempted but never solved: no training candidate with a private pass (``train``), or
        no evaluation chain that solved it (``eval``). Sorted by how many attempts failed."""
        where, params = self._dash_scope(experiment_id)
        params.update(limit=int(limit), offset=int(offset))
        if source == "eval":
            ev_where = ""
            if experiment_id is not None:
                ev_where = " AND (ev.experiment_id = :exp OR rd.experiment_id = :exp)"
            return self._dash_rows(
                f"""
                SELECT p.id AS problem_id, p.external_id, d.name AS dataset, COUNT(*) AS attempts,
                       COUNT(DISTINCT er.evaluation_id) AS evaluations,
                       SUM(CASE WHEN er.public_passed THEN 1 ELSE 0 END) AS public_passes
                FROM evaluation_results er
                JOIN evaluations ev ON ev.id = er.evaluation_id
                LEFT JOIN rounds rd ON rd.id = ev.round_id
                JOIN problems p ON p.id = er.problem_id JOIN datasets d ON d.id = p.dataset_id
                WHERE 1 = 1 {ev_where}
                GROUP BY p.id, p.external_id, d.name
                HAVING SUM(CASE WHEN er.solved THEN 1 ELSE 0 END) = 0
                ORDER BY COUNT(*) DESC, p.external_id LIMIT :limit OFFSET :offset
                """,
                params,
            )
        scope = "ro2.round_id IN (SELECT id FROM rounds rd WHERE 1 = 1" + where + ")"
        return self._dash_rows(
            f"""
            WITH att AS (
                SELECT ro.problem_id, COUNT(*) AS rollouts, SUM(ro.num_turns) AS turns,
                       SUM(CASE WHEN ro.public_passed THEN 1 ELSE 0 END) AS public_passes,
                       MAX(rd."index") AS last_round
                FROM rollouts ro JOIN rounds rd ON rd.id = ro.round_id
                WHERE 1 = 1 {where}
                GROUP BY ro.problem_id
                HAVING SUM(CASE WHEN ro.final_label THEN 1 ELSE 0 END) = 0
            )
            SELECT p.id AS problem_id, p.external_id, d.name AS dataset, att.rollouts, att.turns,
                   att.public_passes, att.last_round
            FROM att JOIN problems p ON p.id = att.problem_id JOIN datasets d ON d.id = p.dataset_id
            WHERE NOT EXISTS (
                SELECT 1 FROM rollouts ro2 JOIN turns t ON t.rollout_id = ro2.id
                JOIN candidates c ON c.turn_id = t.id
                WHERE ro2.problem_id = att.problem_id AND c.private_passed AND {scope}
            )
            ORDER BY att.rollouts DESC, p.external_id LIMIT :limit OFFSET :offset
            """,
            params,
        )

    # -- rankings ---------------------------------------------------------------------------------
    def dash_verifiers(self) -> list[dict[str, Any]]:
        """Verifier versions with their stored metrics and how many candidates each has scored."""
        return self._dash_rows(
            """
            SELECT mv.id, mv.name, mv.base_model, mv.round_id, rd."index" AS round, ex.name AS experiment,
                   mv.metrics, mv.config, mv.created_at,
                   (SELECT COUNT(*) FROM verifier_scores vs WHERE vs.verifier_id = mv.id) AS scored
            FROM model_versions mv
            LEFT JOIN rounds rd ON rd.id = mv.round_id
            LEFT JOIN experiments ex ON ex.id = rd.experiment_id
            WHERE mv.kind = 'verifier'
            ORDER BY mv.created_at, mv.id
            """
        )

    def dash_problem_verifiers(self, problem_id: int) -> list[dict[str, Any]]:
        """Verifiers that scored some candidate of the problem (newest first)."""
        return self._dash_rows(
            """
            SELECT vs.verifier_id AS id, mv.name, COUNT(*) AS scored
            FROM rollouts ro JOIN turns t ON t.rollout_id = ro.id JOIN candidates c ON c.turn_id = t.id
            JOIN verifier_scores vs ON vs.candidate_id = c.id JOIN model_versions mv ON mv.id = vs.verifier_id
            WHERE ro.problem_id = :pid
            GROUP BY vs.verifier_id, mv.name ORDER BY vs.verifier_id DESC
            """,
            {"pid": int(problem_id)},
        )

    def dash_problem_ranking(self, problem_id: int, verifier_id: int, *, limit: int = 50,
                             offset: int = 0) -> list[dict[str, Any]]:
        """The problem's candidates ranked by one verifier's score (best first), with their labels.

        ``wrong_above`` is, for a correct candidate, how many incorrect ones score higher.
        """
        return self._dash_rows(
            """
            WITH s AS (
                SELECT c.id AS candidate_id, vs.score, c.public_passed, c.private_passed, c.chosen,
                       ro.id AS rollout_id, ro.round_id, ro.evaluation_id, t."index" AS turn,
                       c.sample_index, SUBSTR(c.code, 1, 400) AS code
                FROM rollouts ro JOIN turns t ON t.rollout_id = ro.id JOIN candidates c ON c.turn_id = t.id
                JOIN verifier_scores vs ON vs.candidate_id = c.id AND vs.verifier_id = :vid
                WHERE ro.problem_id = :pid
            ),
            r AS (
                SELECT s.*, RANK() OVER (ORDER BY score DESC) AS rank,
                       SUM(CASE WHEN private_passed THEN 0 ELSE 1 END) OVER (
                           ORDER BY score DESC RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS wrong_upto
                FROM s
            )
            SELECT r.rank, r.candidate_id, r.score, r.public_passed, r.private_passed, r.chosen,
                   r.rollout_id, r.round_id, rd."index" AS round, r.evaluation_id, ev.name AS evaluation,
                   r.turn, r.sample_index, r.code,
                   CASE WHEN r.private_passed THEN r.wrong_upto END AS wrong_above
            FROM r LEFT JOIN rounds rd ON rd.id = r.round_id LEFT JOIN evaluations ev ON ev.id = r.evaluation_id
            ORDER BY r.rank, r.candidate_id LIMIT :limit OFFSET :offset
            """,
            {"pid": int(problem_id), "vid": int(verifier_id), "limit": int(limit), "offset": int(offset)},
        )

    def dash_verifier_live_metrics(self, verifier_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Per verifier, from its scores and the oracle labels: the pooled AUC over all scored candidates
        (rank-sum formula with tie correction, window functions) and the label balance."""
        where, params, exp = "", {}, ()
        if verifier_ids:
            where, params, exp = " AND vs.verifier_id IN :vids", {"vids": [int(v) for v in verifier_ids]}, ("vids",)
        return self._dash_rows(
            f"""
            WITH s AS (
                SELECT vs.verifier_id, vs.score, CASE WHEN c.private_passed THEN 1 ELSE 0 END AS y
                FROM verifier_scores vs JOIN candidates c ON c.id = vs.candidate_id
                WHERE c.private_passed IS NOT NULL {where}
            ),
            r AS (
                SELECT verifier_id, y, score,
                       RANK() OVER (PARTITION BY verifier_id ORDER BY score)
                       + (COUNT(*) OVER (PARTITION BY verifier_id, score) - 1) / 2.0 AS rk
                FROM s
            ),
            a AS (
                SELECT verifier_id, COUNT(*) AS n, SUM(y) AS npos,
                       SUM(CASE WHEN y = 1 THEN rk ELSE 0 END) AS rank_pos,
                       AVG(score) AS mean_score, MIN(score) AS min_score, MAX(score) AS max_score
                FROM r GROUP BY verifier_id
            )
            SELECT a.verifier_id, mv.name AS verifier, a.n AS candidates, a.npos AS correct,
                   a.mean_score, a.min_score, a.max_score,
                   CASE WHEN a.npos > 0 AND a.npos < a.n
                        THEN (a.rank_pos - a.npos * (a.npos + 1) / 2.0) / (1.0 * a.npos * (a.n - a.npos))
                   END AS auc
            FROM a JOIN model_versions mv ON mv.id = a.verifier_id ORDER BY a.verifier_id
            """,
            params,
            exp,
        )

    def dash_verifier_calibration(self, verifier_id: int, bins: int = 10) -> list[dict[str, Any]]:
        """Reliability by score decile (NTILE): mean score and the observed share of correct candidates.

        Every row also carries the verifier's pooled ``auc`` over all its executed candidates (mid-rank
        Mann-Whitney from the same sorted window, so one scan gives both).
        """
        return self._dash_rows(
            """
            WITH s AS (
                SELECT vs.score, CASE WHEN c.private_passed THEN 1 ELSE 0 END AS y
                FROM verifier_scores vs JOIN candidates c ON c.id = vs.candidate_id
                WHERE vs.verifier_id = :vid AND c.private_passed IS NOT NULL
            ),
            r AS (
                SELECT score, y, NTILE(:bins) OVER w AS bin, (RANK() OVER w + COUNT(*) OVER w) / 2.0 AS midrank
                FROM s WINDOW w AS (ORDER BY score)
            ),
            a AS (
                SELECT COUNT(*) AS n, SUM(y) AS npos, SUM(CASE WHEN y = 1 THEN midrank ELSE 0 END) AS rank_pos
                FROM r
            )
            SELECT r.bin, COUNT(*) AS candidates, AVG(r.score) AS mean_score, MIN(r.score) AS min_score,
                   MAX(r.score) AS max_score, AVG(1.0 * r.y) AS observed,
                   MAX(a.n) AS total, MAX(a.npos) AS correct,
                   MAX(CASE WHEN a.npos > 0 AND a.npos < a.n
                            THEN (a.rank_pos - a.npos * (a.npos + 1) / 2.0) / (1.0 * a.npos * (a.n - a.npos))
                       END) AS auc
            FROM r CROSS JOIN a GROUP BY r.bin ORDER BY r.bin
            """,
            {"vid": int(verifier_id), "bins": int(bins)},
        )

    def dash_relabel_targets(self, problem_id: int, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """The relabeled SFT target of each state of the problem: (rollout, turn) -> target candidate."""
        return self._dash_rows(
            """
            SELECT se.id, ts.name AS training_set, ts.round_id, rd."index" AS round, se.rollout_id,
                   ro.sample_index, ro.final_label AS rollout_label, se.turn_index, se.source,
                   se.target_candidate_id, tc.private_passed AS target_label, tt.rollout_id AS target_rollout_id,
                   tt."index" AS target_turn, mv.name AS verifier, vs.score AS target_score,
                   SUBSTR(tc.code, 1, 400) AS target_code
            FROM sft_examples se
            JOIN training_sets ts ON ts.id = se.training_set_id
            LEFT JOIN rounds rd ON rd.id = ts.round_id
            JOIN rollouts ro ON ro.id = se.rollout_id
            JOIN candidates tc ON tc.id = se.target_candidate_id
            JOIN turns tt ON tt.id = tc.turn_id
            LEFT JOIN model_versions mv ON mv.id = se.verifier_id
            LEFT JOIN verifier_scores vs ON vs.candidate_id = se.target_candidate_id AND vs.verifier_id = se.verifier_id
            WHERE se.problem_id = :pid
            ORDER BY ts.id DESC, se.rollout_id, se.turn_index LIMIT :limit OFFSET :offset
            """,
            {"pid": int(problem_id), "limit": int(limit), "offset": int(offset)},
        )

    def dash_sft_state(self, example_id: int) -> dict[str, Any] | None:
        """One SFT example in full: the state's messages (history before the turn) and the target response."""
        row = self._dash_one(
            """
            SELECT se.id, se.rollout_id, se.turn_index, se.source, t.messages, tc.response AS target_response,
                   tc.code AS target_code, tc.private_passed AS target_label
            FROM sft_examples se
            JOIN candidates tc ON tc.id = se.target_candidate_id
            LEFT JOIN turns t ON t.rollout_id = se.rollout_id AND t."index" = se.turn_index
            WHERE se.id = :id
            """,
            {"id": int(example_id)},
        )
        return row

    # -- comparison and verifier diagnostics --------------------------------------------------------
    def dash_eval_problem_outcomes(self, evaluation_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Per evaluation and problem, a histogram of its chains by the turn at which each is first solved
        (``first_solved``; NULL: never): ``chains`` chains of the problem have that value. The share of a
        problem's chains with ``first_solved <= t`` is its true success at turn t; its mean over problems is
        the stored accuracy of ``dash_eval_turn_success``, and the per-problem values are what the intervals
        resample."""
        ids = [int(e) for e in evaluation_ids] or [-1]
        return self._dash_rows(
            """
            WITH chains AS (
                SELECT er.evaluation_id, er.problem_id, er.chain_index,
                       MIN(CASE WHEN er.solved THEN er.turn_index END) AS first_solved
                FROM evaluation_results er
                WHERE er.evaluation_id IN :evids
                GROUP BY er.evaluation_id, er.problem_id, er.chain_index
            )
            SELECT evaluation_id, problem_id, first_solved, COUNT(*) AS chains
            FROM chains GROUP BY evaluation_id, problem_id, first_solved
            ORDER BY evaluation_id, problem_id, first_solved
            """,
            {"evids": ids},
        )

    def dash_bon_first_turn(self, evaluation_id: int) -> list[dict[str, Any]]:
        """Every first-turn candidate of an evaluation's chains with its verdicts and its score by the
        evaluation's verifier (NULL when unscored): the input of the Best-of-n scaling curve."""
        return self._dash_rows(
            """
            SELECT ro.problem_id, ro.sample_index AS chain_index, c.sample_index, c.public_passed,
                   c.private_passed, vs.score
            FROM evaluations ev
            JOIN rollouts ro ON ro.evaluation_id = ev.id
            JOIN turns t ON t.rollout_id = ro.id AND t."index" = 1
            JOIN candidates c ON c.turn_id = t.id
            LEFT JOIN verifier_scores vs ON vs.candidate_id = c.id AND vs.verifier_id = ev.verifier_id
            WHERE ev.id = :evid
            ORDER BY ro.problem_id, ro.sample_index, c.sample_index
            """,
            {"evid": int(evaluation_id)},
        )

    def dash_verifier_curves(self, verifier_ids: Sequence[int], *, source: str | None = None, points: int = 100,
                             bins: int = 10) -> list[dict[str, Any]]:
        """The reliability diagram and the ROC curve of each verifier, from one scan of its executed candidates.

        Rows per (verifier, ``tile``, ``bin``): ``tile`` is the candidate's score quantile (NTILE(``points``),
        lowest first: the ROC thresholds), ``bin`` its predicted-probability bin (``sigmoid(score)`` in ``bins``
        equal-width bins of [0, 1], i.e. score edges ``logit(k / bins)``); each with the candidates, how many
        pass the private tests, the summed predicted probability, the score range and the summed (doubled)
        mid-ranks of its correct candidates, from which the exact AUC follows (Mann-Whitney, ties half).
        ``source``: ``train`` / ``eval`` rollouts only, or every scored candidate (None).
        ``app.calibration.verifier_curves`` turns the rows into the plotted points.
        """
        from app.calibration import probability_edges

        edges = probability_edges(int(bins))
        bin_sql = "CASE " + " ".join(f"WHEN score < {e!r} THEN {i}" for i, e in enumerate(edges)) + \
                  f" ELSE {len(edges)} END"
        if self.is_postgres:  # type: ignore[attr-defined]
            prob = "1.0 / (1.0 + EXP(-LEAST(GREATEST(score, -700.0), 700.0)))"
        else:
            prob = "mucode_sigmoid(score)"
        if source is None:
            scope = ""  # every scored candidate: no need to reach its rollout
        elif source in ("train", "eval"):
            owner = "ro.evaluation_id" if source == "eval" else "ro.round_id"
            scope = f"JOIN turns t ON t.id = c.turn_id JOIN rollouts ro ON ro.id = t.rollout_id AND {owner} IS NOT NULL"
        else:
            raise ValueError(f"unknown source {source!r} (expected 'train', 'eval' or none)")
        return self._dash_rows(
            f"""
            WITH s AS (
                SELECT vs.verifier_id, vs.score, CASE WHEN c.private_passed THEN 1 ELSE 0 END AS y
                FROM verifier_scores vs
                JOIN candidates c ON c.id = vs.candidate_id {scope}
                WHERE vs.verifier_id IN :vids AND c.private_passed IS NOT NULL
            ),
            r AS (
                -- twice the mid-rank, an integer: exact, and no per-row decimal arithmetic
                SELECT verifier_id, score, y, NTILE(:points) OVER w AS tile, {bin_sql} AS bin, {prob} AS prob,
                       RANK() OVER w + COUNT(*) OVER w AS midrank2
                FROM s WINDOW w AS (PARTITION BY verifier_id ORDER BY score)
            )
            SELECT verifier_id, tile, bin, COUNT(*) AS candidates, SUM(y) AS correct, SUM(prob) AS sum_prob,
                   MIN(score) AS min_score, MAX(score) AS max_score,
                   SUM(CASE WHEN y = 1 THEN midrank2 ELSE 0 END) AS midrank2_correct
            FROM r GROUP BY verifier_id, tile, bin ORDER BY verifier_id, tile, bin
            """,
            {"vids": [int(v) for v in verifier_ids] or [-1], "points": int(points)},
            sigmoid=True,
        )
