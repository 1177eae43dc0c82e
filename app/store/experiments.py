"""Store queries: experiments, rounds, evaluations and model versions (issues 4, 7).

Minimal, idempotent create/get helpers; the rounds/eval work extends this module. Creation is keyed by the
natural unique key (name, or (experiment, index) for rounds): calling a ``create_*``/``ensure_*`` twice
returns the same row. Getters return detached ORM rows (the session does not expire them on commit).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from app.db import models as m
from app.errors import NotFound

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

    def get_model_version(self, ref: int | str) -> m.ModelVersion:
        """By id or by name; NotFound otherwise."""
        with self.session() as s:
            if isinstance(ref, int):
                row = s.get(m.ModelVersion, ref)
            else:
                row = s.execute(select(m.ModelVersion).where(m.ModelVersion.name == ref)).scalar_one_or_none()
            if row is None:
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
    ) -> int:
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
                    }
                ],
                ["experiment_id", "index"],
            )
            return s.execute(
                select(m.Round.id).where(m.Round.experiment_id == experiment_id, m.Round.index == index)
            ).scalar_one()

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

    def set_evaluation_status(self, evaluation_id: int, status: str, *, finished: bool = False) -> None:
        values: dict[str, Any] = {"status": status}
        if finished:
            values["finished_at"] = _utcnow()
        with self.session() as s:
            s.execute(update(m.Evaluation).where(m.Evaluation.id == evaluation_id).values(**values))
