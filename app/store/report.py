"""Store queries for reports and notebooks: per-problem outcomes of evaluations, experiment groups, and an
experiment's tables as plain rows (``app.frames`` turns them into DataFrames, ``mucode export`` into files).

Per-problem outcomes are aggregated in SQL: one row per (evaluation, problem) with, for every turn t, how many
of the problem's chains count as solved (the stored cumulative ``solved`` flag) and public-passed by turn t. A
chain that stopped early keeps its outcome for the later turns, exactly as ``app.evaluation.compute_metrics``
and the dashboard count it, so the mean over problems of ``solved_t / chains`` is the stored true success.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy import text as sql
from sqlalchemy.orm import aliased

from app.db import models as m

# The methods of a comparison group, in the order of the paper's tables (µCode first: it is compared to each).
GROUP_METHODS = ("mucode", "multi_rft", "rft", "rft_lv")

# The tables an experiment exports, in dependency order.
FRAME_TABLES = ("rollouts", "turns", "candidates", "executions", "verifier_scores", "evaluations",
                "evaluation_results")


def group_member_name(group: str, method: str) -> str:
    return f"{group}-{method}"


class ReportMixin:
    # -- evaluations: per-problem outcomes ---------------------------------------------------------------
    def report_problem_outcomes(self, evaluation_ids: Sequence[int], max_turns: int) -> list[dict[str, Any]]:
        """One row per (evaluation, problem): ``chains``, ``first_any`` (the first turn at which any chain is
        solved, None: never) and ``solved_t`` / ``public_t`` for t = 1..``max_turns`` (chains solved /
        public-passed at a turn <= t)."""
        ids = sorted({int(i) for i in evaluation_ids})
        if not ids:
            return []
        er = m.EvaluationResult
        chains = (
            select(
                er.evaluation_id, er.problem_id, er.chain_index,
                func.min(case((er.solved, er.turn_index))).label("first_solved"),
                func.min(case((er.public_passed, er.turn_index))).label("first_public"),
            )
            .where(er.evaluation_id.in_(ids))
            .group_by(er.evaluation_id, er.problem_id, er.chain_index)
            .subquery()
        )  # fmt: skip
        cols = [chains.c.evaluation_id, chains.c.problem_id, func.count().label("chains"),
                func.min(chains.c.first_solved).label("first_any")]
        for t in range(1, int(max_turns) + 1):
            cols.append(func.sum(case((chains.c.first_solved <= t, 1), else_=0)).label(f"solved_{t}"))
            cols.append(func.sum(case((chains.c.first_public <= t, 1), else_=0)).label(f"public_{t}"))
        q = (select(*cols).group_by(chains.c.evaluation_id, chains.c.problem_id)
             .order_by(chains.c.evaluation_id, chains.c.problem_id))
        with self.session() as s:  # type: ignore[attr-defined]
            if self.is_postgres:  # type: ignore[attr-defined]
                # A report groups every chain of its evaluations (hundreds of thousands of rows on a long
                # run): hash them in memory rather than spilling to disk, and skip JIT (it costs more than it
                # saves on a sub-second query). SET LOCAL ends with the transaction.
                s.execute(sql("SET LOCAL work_mem = '64MB'"))
                s.execute(sql("SET LOCAL jit = off"))
            return [dict(r) for r in s.execute(q).mappings()]

    # -- experiment groups -------------------------------------------------------------------------------
    def report_group_members(self, group: str) -> list[m.Experiment]:
        """The experiments of the comparison group ``group``: ``GROUP-<method>`` whose method is ``<method>``,
        in ``GROUP_METHODS`` order (empty when there is no such group)."""
        names = {group_member_name(group, meth): meth for meth in GROUP_METHODS}
        with self.session() as s:  # type: ignore[attr-defined]
            rows = s.execute(select(m.Experiment).where(m.Experiment.name.in_(list(names)))).scalars().all()
        found = {e.name: e for e in rows if e.method == names[e.name]}
        return [found[n] for n in names if n in found]

    # -- an experiment's tables as rows ---------------------------------------------------------------------
    def _frame_scope(self, experiment_id: int):
        """(round ids, evaluation ids) selects of the experiment: its rounds and every evaluation of them or
        attached to it."""
        rids = select(m.Round.id).where(m.Round.experiment_id == experiment_id)
        evids = select(m.Evaluation.id).where(
            or_(m.Evaluation.experiment_id == experiment_id, m.Evaluation.round_id.in_(rids)))
        return rids, evids

    def _frame_rollouts_where(self, experiment_id: int):
        rids, evids = self._frame_scope(experiment_id)
        return or_(m.Rollout.round_id.in_(rids), m.Rollout.evaluation_id.in_(evids))

    def frame_rows(self, table: str, experiment_id: int, *, text: bool = True) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of one of ``FRAME_TABLES`` restricted to the experiment (its training rollouts
        and its evaluations' chains). ``text=False`` leaves out the long text columns (messages, responses,
        code, execution output). JSON columns come as JSON strings."""
        if table not in FRAME_TABLES:
            raise ValueError(f"unknown table {table!r} (one of: {', '.join(FRAME_TABLES)})")
        q, json_cols = getattr(self, f"_frame_{table}")(int(experiment_id), text)
        with self.session() as s:  # type: ignore[attr-defined]
            res = s.execute(q)
            cols = list(res.keys())
            rows = res.all()
        if json_cols:
            ix = [cols.index(c) for c in json_cols if c in cols]
            rows = [tuple(json.dumps(v, ensure_ascii=False) if i in ix and v is not None else v
                          for i, v in enumerate(r)) for r in rows]
        else:
            rows = [tuple(r) for r in rows]
        return cols, rows

    def _frame_rollouts(self, eid: int, text: bool):
        ro, p, ds = m.Rollout, m.Problem, m.Dataset
        q = (
            select(ro.id.label("rollout_id"), ro.round_id, m.Round.index.label("round_index"), ro.evaluation_id,
                   m.Evaluation.name.label("evaluation"), ro.problem_id, p.external_id.label("problem"),
                   ds.name.label("dataset"), p.split, ro.generator_id, ro.sample_index, ro.seed, ro.status,
                   ro.num_turns, ro.final_label, ro.public_passed)
            .join(p, p.id == ro.problem_id).join(ds, ds.id == p.dataset_id)
            .outerjoin(m.Round, m.Round.id == ro.round_id)
            .outerjoin(m.Evaluation, m.Evaluation.id == ro.evaluation_id)
            .where(self._frame_rollouts_where(eid))
            .order_by(ro.id)
        )  # fmt: skip
        return q, ()

    def _frame_turns(self, eid: int, text: bool):
        t = m.Turn
        cols = [t.id.label("turn_id"), t.rollout_id, t.index.label("turn"), t.feedback]
        if text:
            cols.append(t.messages)
        q = (select(*cols).join(m.Rollout, m.Rollout.id == t.rollout_id)
             .where(self._frame_rollouts_where(eid)).order_by(t.id))
        return q, ("messages",)

    def _frame_candidates(self, eid: int, text: bool):
        c, t = m.Candidate, m.Turn
        cols = [c.id.label("candidate_id"), c.turn_id, t.rollout_id, t.index.label("turn"), c.sample_index,
                c.chosen, c.public_passed, c.private_passed, c.code_hash, c.prompt_tokens, c.completion_tokens,
                c.finish_reason, c.sampling]
        if text:
            cols += [c.response, c.code]
        q = (select(*cols).join(t, t.id == c.turn_id).join(m.Rollout, m.Rollout.id == t.rollout_id)
             .where(self._frame_rollouts_where(eid)).order_by(c.id))
        return q, ("sampling",)

    def _frame_executions(self, eid: int, text: bool):
        """Every execution of a candidate's code on its problem's public or private suite (an execution is
        shared by all candidates with the same code: one row per (execution, problem))."""
        e, c, p = m.Execution, m.Candidate, m.Problem
        pairs = (
            select(c.code_hash, m.Rollout.problem_id)
            .join(m.Turn, m.Turn.id == c.turn_id).join(m.Turn.rollout)
            .where(self._frame_rollouts_where(eid)).distinct().subquery()
        )  # fmt: skip
        cols = [e.id.label("execution_id"), pairs.c.problem_id, e.code_hash, e.suite_kind, e.suite_hash,
                e.sandbox_version, e.status, e.passed, e.duration_ms, e.feedback]
        if text:
            cols += [e.tests, e.stdout, e.stderr]
        q = (
            select(*cols)
            .join(p, p.id == pairs.c.problem_id)
            .join(e, (e.code_hash == pairs.c.code_hash)
                  & (((e.suite_kind == "public") & (e.suite_hash == p.public_suite_hash))
                     | ((e.suite_kind == "private") & (e.suite_hash == p.private_suite_hash))))
            .order_by(e.id, pairs.c.problem_id)
        )  # fmt: skip
        return q, ("tests",)

    def _frame_verifier_scores(self, eid: int, text: bool):
        vs, c, t = m.VerifierScore, m.Candidate, m.Turn
        q = (
            select(vs.candidate_id, vs.verifier_id, m.ModelVersion.name.label("verifier"), vs.score)
            .join(c, c.id == vs.candidate_id).join(t, t.id == c.turn_id)
            .join(m.Rollout, m.Rollout.id == t.rollout_id)
            .join(m.ModelVersion, m.ModelVersion.id == vs.verifier_id)
            .where(self._frame_rollouts_where(eid))
            .order_by(vs.candidate_id, vs.verifier_id)
        )  # fmt: skip
        return q, ()

    def _frame_evaluations(self, eid: int, text: bool):
        ev = m.Evaluation
        g, v = aliased(m.ModelVersion), aliased(m.ModelVersion)
        _, evids = self._frame_scope(eid)
        q = (
            select(ev.id.label("evaluation_id"), ev.name, ev.round_id, m.Round.index.label("round_index"),
                   ev.generator_id, g.name.label("generator"), ev.verifier_id, v.name.label("verifier"),
                   ev.dataset, ev.split, ev.mode, ev.selector, ev.num_candidates, ev.num_chains, ev.max_turns,
                   ev.status, ev.config, ev.metrics, ev.finished_at)
            .join(g, g.id == ev.generator_id).outerjoin(v, v.id == ev.verifier_id)
            .outerjoin(m.Round, m.Round.id == ev.round_id)
            .where(ev.id.in_(evids)).order_by(ev.id)
        )  # fmt: skip
        return q, ("config", "metrics")

    def _frame_evaluation_results(self, eid: int, text: bool):
        er, p = m.EvaluationResult, m.Problem
        _, evids = self._frame_scope(eid)
        q = (
            select(er.evaluation_id, er.problem_id, p.external_id.label("problem"), er.chain_index,
                   er.turn_index.label("turn"), er.candidate_id, er.public_passed, er.private_passed, er.solved)
            .join(p, p.id == er.problem_id)
            .where(er.evaluation_id.in_(evids))
            .order_by(er.evaluation_id, er.problem_id, er.chain_index, er.turn_index)
        )  # fmt: skip
        return q, ()

