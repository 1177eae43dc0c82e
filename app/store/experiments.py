"""Store queries: experiments, rounds, evaluations and model versions.

Creation is keyed by the natural unique key (name, or (experiment, index) for rounds): calling a
``create_*``/``ensure_*`` twice returns the same row. Getters return detached ORM rows (the session does not
expire them on commit).

Round state: ``rounds.steps`` holds one record per step (state, attempt, timings, error, result);
``update_round_step`` changes one record as a compare-and-set under a row lock, so two orchestrators never
start the same step twice. Evaluations: ``evaluation_picks`` reads the chosen candidate of every executed turn
of the finished chains, ``write_evaluation_results`` stores the per (problem, chain, turn) rows
(``app.evaluation.result_rows``) with ``ON CONFLICT DO NOTHING``, ``set_evaluation_metrics`` the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, overload

from sqlalchemy import func, select, update
from sqlalchemy.orm import aliased

from app.db import models as m
from app.errors import MucodeError, NotFound
from app.rounds import StepRecord

# Evaluation modes: greedy and bon are evaluations proper; "collect" is a standalone rollout collection
# (`mucode rollouts collect`), kept out of every training table because its rollouts hang off an evaluation.
EVAL_MODES = ("greedy", "bon", "collect")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ExperimentsMixin:
    # -- model versions ---------------------------------------------------------------------------
    def ensure_model_version(
        self,
        name: str,
        kind: str,
        base_model: str,
        uri: str,
        *,
        parent_id: int | None = None,
        round_id: int | None = None,
        config: dict[str, Any] | None = None,
    ) -> int:
        """The id of the model version called ``name``; created if missing (an existing row is kept as is)."""
        if kind not in m.MODEL_KINDS:
            raise ValueError(f"model kind must be one of {m.MODEL_KINDS}, not {kind!r}")
        row = {
            "name": name,
            "kind": kind,
            "base_model": base_model,
            "uri": uri,
            "parent_id": parent_id,
            "round_id": round_id,
            "config": config or {},
            "metrics": {},
        }
        with self.session() as s:
            self.insert_ignore(s, m.ModelVersion.__table__, [row], ["name"])
            return s.execute(select(m.ModelVersion.id).where(m.ModelVersion.name == name)).scalar_one()

    @overload
    def get_model_version(self, ref: int | str) -> m.ModelVersion: ...
    @overload
    def get_model_version(self, ref: int | str, *, required: Literal[False]) -> m.ModelVersion | None: ...

    def get_model_version(self, ref: int | str, *, required: bool = True) -> m.ModelVersion | None:
        """By id or by name; NotFound otherwise (None with ``required=False``)."""
        with self.session() as s:
            if isinstance(ref, int):
                row = s.get(m.ModelVersion, ref)
            else:
                row = s.execute(select(m.ModelVersion).where(m.ModelVersion.name == ref)).scalar_one_or_none()
            if row is None and required:
                raise NotFound(f"no model version {ref!r}")
            return row

    # -- experiments and rounds -------------------------------------------------------------------
    def create_experiment(self, name: str, method: str, base_model: str, config: dict[str, Any]) -> int:
        with self.session() as s:
            self.insert_ignore(
                s,
                m.Experiment.__table__,
                [{"name": name, "method": method, "base_model": base_model, "config": config}],
                ["name"],
            )
            return s.execute(select(m.Experiment.id).where(m.Experiment.name == name)).scalar_one()

    def get_experiment(self, ref: int | str) -> m.Experiment:
        with self.session() as s:
            if isinstance(ref, int):
                row = s.get(m.Experiment, ref)
            else:
                row = s.execute(select(m.Experiment).where(m.Experiment.name == ref)).scalar_one_or_none()
            if row is None:
                raise NotFound(f"no experiment {ref!r}")
            return row

    def create_round(
        self,
        experiment_id: int,
        index: int,
        *,
        generator_id: int | None = None,
        verifier_in_id: int | None = None,
        status: str = "pending",
        final: bool = False,
    ) -> int:
        """The round ``index`` of the experiment, created if missing. An existing round is returned as it is,
        unless it disagrees on ``final`` (a round's plan never changes once it exists)."""
        with self.session() as s:
            self.insert_ignore(
                s,
                m.Round.__table__,
                [
                    {
                        "experiment_id": experiment_id,
                        "index": index,
                        "status": status,
                        "generator_id": generator_id,
                        "verifier_in_id": verifier_in_id,
                        "steps": {},
                        "final": final,
                    }
                ],
                ["experiment_id", "index"],
            )
            rid, was_final = s.execute(
                select(m.Round.id, m.Round.final).where(
                    m.Round.experiment_id == experiment_id, m.Round.index == index
                )
            ).one()
            if bool(was_final) != final:
                raise MucodeError(
                    f"round {index} exists as a {'final' if was_final else 'normal'} round, not a "
                    f"{'final' if final else 'normal'} one"
                )
            return rid

    def get_round(self, round_id: int) -> m.Round:
        with self.session() as s:
            row = s.get(m.Round, round_id)
            if row is None:
                raise NotFound(f"no round {round_id}")
            return row

    # -- evaluations (and standalone collections, mode "collect") -----------------------------------
    def create_evaluation(
        self,
        name: str,
        *,
        generator_id: int,
        dataset: str,
        split: str | None,
        mode: str,
        selector: str | None = None,
        verifier_id: int | None = None,
        num_candidates: int = 1,
        num_chains: int = 1,
        max_turns: int = 3,
        config: dict[str, Any] | None = None,
        experiment_id: int | None = None,
        round_id: int | None = None,
    ) -> int:
        """Create the evaluation ``name`` (idempotent by name: an existing row is returned unchanged)."""
        if mode not in EVAL_MODES:
            raise ValueError(f"evaluation mode must be one of {EVAL_MODES}, not {mode!r}")
        row = {
            "name": name,
            "experiment_id": experiment_id,
            "round_id": round_id,
            "generator_id": generator_id,
            "verifier_id": verifier_id,
            "dataset": dataset,
            "split": split,
            "mode": mode,
            "selector": selector,
            "num_candidates": num_candidates,
            "num_chains": num_chains,
            "max_turns": max_turns,
            "config": config or {},
            "status": "pending",
            "metrics": {},
        }
        with self.session() as s:
            self.insert_ignore(s, m.Evaluation.__table__, [row], ["name"])
            return s.execute(select(m.Evaluation.id).where(m.Evaluation.name == name)).scalar_one()

    def get_evaluation(self, ref: int | str) -> m.Evaluation:
        with self.session() as s:
            if isinstance(ref, int):
                row = s.get(m.Evaluation, ref)
            else:
                row = s.execute(select(m.Evaluation).where(m.Evaluation.name == ref)).scalar_one_or_none()
            if row is None:
                raise NotFound(f"no evaluation or collection named {ref!r}")
            return row

    def find_evaluation(self, name: str) -> m.Evaluation | None:
        with self.session() as s:
            return s.execute(select(m.Evaluation).where(m.Evaluation.name == name)).scalar_one_or_none()

    def claim_evaluation(self, evaluation_id: int, *, from_states: tuple[str, ...], to_state: str) -> bool:
        """Compare-and-set of an evaluation's status: True for the one caller that moved it."""
        with self.session() as s:
            res = s.execute(
                update(m.Evaluation)
                .where(m.Evaluation.id == evaluation_id, m.Evaluation.status.in_(list(from_states)))
                .values(status=to_state)
            )
            return res.rowcount == 1

    def set_evaluation_status(self, evaluation_id: int, status: str, *, finished: bool = False) -> None:
        values: dict[str, Any] = {"status": status}
        if finished:
            values["finished_at"] = _utcnow()
        with self.session() as s:
            s.execute(update(m.Evaluation).where(m.Evaluation.id == evaluation_id).values(**values))

    # -- experiments: listing -------------------------------------------------------------------------
    def list_experiments(self) -> list[dict[str, Any]]:
        """Every experiment with its round count and the status of its latest round."""
        with self.session() as s:
            exps = s.execute(select(m.Experiment).order_by(m.Experiment.id)).scalars().all()
            rounds = s.execute(
                select(m.Round.experiment_id, m.Round.index, m.Round.status).order_by(m.Round.index)
            ).all()
        by_exp: dict[int, list[tuple[int, str]]] = {}
        for eid, idx, status in rounds:
            by_exp.setdefault(eid, []).append((idx, status))
        out = []
        for e in exps:
            rs = by_exp.get(e.id, [])
            out.append(
                {
                    "id": e.id,
                    "name": e.name,
                    "method": e.method,
                    "base_model": e.base_model,
                    "created_at": e.created_at,
                    "rounds": len(rs),
                    "rounds_done": sum(1 for _, st in rs if st == "done"),
                    "latest_round": rs[-1][0] if rs else None,
                    "latest_status": rs[-1][1] if rs else None,
                }
            )
        return out

    def experiment_rounds(self, experiment_id: int) -> list[m.Round]:
        """The experiment's rounds in index order (detached rows)."""
        with self.session() as s:
            return list(
                s.execute(
                    select(m.Round).where(m.Round.experiment_id == experiment_id).order_by(m.Round.index)
                ).scalars()
            )

    # -- round state ------------------------------------------------------------------------------------
    def update_round_step(
        self,
        round_id: int,
        step: str,
        *,
        expect: tuple[str, ...] | None = None,
        expect_attempt: int | None = None,
        bump_attempt: bool = False,
        **fields: Any,
    ) -> StepRecord | None:
        """Change one step's record in ``rounds.steps`` atomically (the round row is locked on Postgres;
        SQLite serialises writers). A compare-and-set: with ``expect`` (states) or ``expect_attempt`` the
        update happens only when the current record matches, else None is returned and nothing changes.
        ``bump_attempt`` increments ``attempt``. Returns the new record."""
        with self.session() as s:
            q = select(m.Round).where(m.Round.id == round_id)
            if self.is_postgres:
                q = q.with_for_update()
            rnd = s.execute(q).scalar_one_or_none()
            if rnd is None:
                raise NotFound(f"no round {round_id}")
            steps = {k: dict(v) for k, v in (rnd.steps or {}).items()}
            rec = dict(steps.get(step) or {})
            rec.setdefault("state", "pending")
            rec.setdefault("attempt", 0)
            if expect is not None and rec["state"] not in expect:
                return None
            if expect_attempt is not None and int(rec["attempt"]) != int(expect_attempt):
                return None
            if bump_attempt:
                rec["attempt"] = int(rec["attempt"]) + 1
            rec.update(fields)
            steps[step] = rec
            s.execute(update(m.Round).where(m.Round.id == round_id).values(steps=steps))
            return StepRecord.of(rec)

    def set_round(self, round_id: int, **values: Any) -> None:
        """Update round columns: status, error, verifier_out_id, generator_out_id, started_at, finished_at."""
        allowed = {"status", "error", "verifier_out_id", "generator_out_id", "verifier_in_id", "generator_id",
                   "started_at", "finished_at"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"cannot set round column(s) {sorted(unknown)}")
        if not values:
            return
        with self.session() as s:
            s.execute(update(m.Round).where(m.Round.id == round_id).values(**values))

    def mark_round_started(self, round_id: int) -> None:
        """status running (from pending or failed), started_at once, error cleared."""
        with self.session() as s:
            rnd = s.get(m.Round, round_id)
            if rnd is None:
                raise NotFound(f"no round {round_id}")
            values: dict[str, Any] = {"status": "running", "error": None, "finished_at": None}
            if rnd.started_at is None:
                values["started_at"] = _utcnow()
            s.execute(update(m.Round).where(m.Round.id == round_id).values(**values))

    def round_candidate_count(self, round_id: int) -> int:
        """Candidates of the round's training rollouts."""
        with self.session() as s:
            return int(
                s.execute(
                    select(func.count())
                    .select_from(m.Candidate)
                    .join(m.Candidate.turn).join(m.Turn.rollout)
                    .where(m.Rollout.round_id == round_id)
                ).scalar_one()
            )

    def round_scored_count(self, round_id: int, verifier_id: int) -> int:
        """Candidates of the round's rollouts that ``verifier_id`` has scored."""
        with self.session() as s:
            return int(
                s.execute(
                    select(func.count())
                    .select_from(m.VerifierScore)
                    .join(m.Candidate, m.Candidate.id == m.VerifierScore.candidate_id)
                    .join(m.Candidate.turn).join(m.Turn.rollout)
                    .where(m.Rollout.round_id == round_id, m.VerifierScore.verifier_id == verifier_id)
                ).scalar_one()
            )

    # -- evaluations: results and metrics --------------------------------------------------------------------
    def round_evaluations(self, round_id: int) -> list[m.Evaluation]:
        with self.session() as s:
            return list(
                s.execute(
                    select(m.Evaluation).where(m.Evaluation.round_id == round_id).order_by(m.Evaluation.id)
                ).scalars()
            )

    def evaluation_pairs(self, evaluation_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Which (generator, verifier) pair each evaluation searched with: ``{id: {"generator", "verifier",
        "generator_model", "verifier_model"}}``. The labels are ``G<j>`` for a round's own generators (G_k it
        collected with, G_{k+1} it trained) and ``RM<j>`` for the verifier trained by round j of the same
        experiment; any other model is named by its model version (None: no verifier)."""
        g, v, vr = aliased(m.ModelVersion), aliased(m.ModelVersion), aliased(m.Round)
        q = (
            select(m.Evaluation.id, m.Evaluation.generator_id, g.name, v.name, m.Round.index, m.Round.generator_id,
                   m.Round.generator_out_id, func.coalesce(m.Round.experiment_id, m.Evaluation.experiment_id),
                   vr.index, vr.experiment_id)
            .outerjoin(m.Round, m.Round.id == m.Evaluation.round_id)
            .join(g, g.id == m.Evaluation.generator_id)
            .outerjoin(v, v.id == m.Evaluation.verifier_id)
            .outerjoin(vr, vr.id == v.round_id)
            .where(m.Evaluation.id.in_([int(i) for i in evaluation_ids]))
            .order_by(m.Evaluation.id)
        )
        out: dict[int, dict[str, Any]] = {}
        with self.session() as s:
            for ev_id, gid, g_name, v_name, k, g_in, g_out, exp_id, v_index, v_exp in s.execute(q):
                gen = {g_in: f"G{k}", g_out: f"G{k + 1}"}.get(gid) if k is not None else None
                ver = f"RM{v_index}" if v_index is not None and v_exp == exp_id else v_name
                out[ev_id] = {"generator": gen or g_name, "verifier": ver, "generator_model": g_name,
                              "verifier_model": v_name}
        return out

    def experiment_evaluations(self, experiment_id: int) -> list[m.Evaluation]:
        """Evaluations of the experiment's rounds and the ones attached to the experiment itself."""
        with self.session() as s:
            rids = select(m.Round.id).where(m.Round.experiment_id == experiment_id)
            return list(
                s.execute(
                    select(m.Evaluation)
                    .where((m.Evaluation.experiment_id == experiment_id) | m.Evaluation.round_id.in_(rids))
                    .order_by(m.Evaluation.id)
                ).scalars()
            )

    def evaluation_picks(self, evaluation_id: int) -> list[dict[str, Any]]:
        """The pick of every executed turn of the evaluation's finished chains: (problem, chain, turn,
        candidate, public, private). A turn with no chosen candidate, or two, is an error (the chain's
        feedback came from exactly one pick)."""
        q = (
            select(
                m.Rollout.problem_id,
                m.Rollout.sample_index,
                m.Turn.index,
                m.Candidate.id,
                m.Candidate.public_passed,
                m.Candidate.private_passed,
            )
            .join(m.Rollout.turns).join(m.Turn.candidates)
            .where(m.Rollout.evaluation_id == evaluation_id, m.Rollout.status == "done", m.Candidate.chosen.is_(True))
            .order_by(m.Rollout.problem_id, m.Rollout.sample_index, m.Turn.index)
        )
        with self.session() as s:
            rows = s.execute(q).all()
            n_turns = s.execute(
                select(func.count())
                .select_from(m.Turn)
                .join(m.Turn.rollout)
                .where(m.Rollout.evaluation_id == evaluation_id, m.Rollout.status == "done")
            ).scalar_one()
        if len(rows) != int(n_turns):
            raise MucodeError(
                f"evaluation {evaluation_id}: {len(rows)} chosen candidates for {n_turns} executed turns "
                "(every turn of a finished chain must have exactly one pick)"
            )
        out = []
        for pid, chain, turn, cid, pub, priv in rows:
            if pub is None or priv is None:
                raise MucodeError(f"evaluation {evaluation_id}: pick {cid} was never executed")
            out.append(
                {"problem_id": pid, "chain_index": chain, "turn_index": turn, "candidate_id": cid,
                 "public_passed": bool(pub), "private_passed": bool(priv)}
            )
        return out

    def write_evaluation_results(self, evaluation_id: int, rows: list[dict[str, Any]]) -> int:
        """Insert ``evaluation_results`` rows (idempotent on (evaluation, problem, chain, turn)); returns the
        number of rows the evaluation has afterwards."""
        full = [{"evaluation_id": evaluation_id, **r} for r in rows]
        with self.session() as s:
            self.insert_ignore(
                s, m.EvaluationResult.__table__, full, ["evaluation_id", "problem_id", "chain_index", "turn_index"]
            )
            return int(
                s.execute(
                    select(func.count())
                    .select_from(m.EvaluationResult)
                    .where(m.EvaluationResult.evaluation_id == evaluation_id)
                ).scalar_one()
            )

    def evaluation_results(self, evaluation_id: int) -> list[dict[str, Any]]:
        cols = (
            m.EvaluationResult.problem_id,
            m.EvaluationResult.chain_index,
            m.EvaluationResult.turn_index,
            m.EvaluationResult.candidate_id,
            m.EvaluationResult.public_passed,
            m.EvaluationResult.private_passed,
            m.EvaluationResult.solved,
        )
        with self.session() as s:
            rows = s.execute(
                select(*cols)
                .where(m.EvaluationResult.evaluation_id == evaluation_id)
                .order_by(m.EvaluationResult.problem_id, m.EvaluationResult.chain_index,
                          m.EvaluationResult.turn_index)
            ).all()
        return [
            {"problem_id": r[0], "chain_index": r[1], "turn_index": r[2], "candidate_id": r[3],
             "public_passed": bool(r[4]), "private_passed": bool(r[5]), "solved": bool(r[6])}
            for r in rows
        ]

    def set_evaluation_metrics(self, evaluation_id: int, metrics: dict[str, Any], *, status: str = "done") -> None:
        with self.session() as s:
            s.execute(
                update(m.Evaluation)
                .where(m.Evaluation.id == evaluation_id)
                .values(metrics=metrics, status=status, finished_at=_utcnow())
            )

    def evaluation_problem_count(self, evaluation_id: int) -> int:
        with self.session() as s:
            return int(
                s.execute(
                    select(func.count(func.distinct(m.Rollout.problem_id))).where(
                        m.Rollout.evaluation_id == evaluation_id
                    )
                ).scalar_one()
            )
