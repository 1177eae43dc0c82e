"""Store queries: verifier training sets, drawn pairs, scores and the rows the verifier metrics read.

Split hygiene is enforced here, in SQL: every query that feeds a verifier *training* set joins the problem and
its dataset and keeps only ``problems.split = 'train'`` of a training dataset (``TRAINING_DATASETS``), and only
rollouts of training rounds (never of evaluations). MBPP test/validation/prompt, HumanEval and the "+"
variants can therefore never reach a training set, whatever rollouts a round holds. ``verifier_training_set_leaks``
re-checks a stored set before a trainer uses it.

Method names start with ``verifier`` (or name scores/pairs explicitly) so that they never collide with the
other areas' mixins composed into ``Store``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update

from app.db import models as m
from app.errors import MucodeError, NotFound
from app.store.base import id_or_name, training_set_dict

# Datasets whose train split may be trained on (MBPP+ inherits MBPP's split but is evaluation data).
TRAINING_DATASETS: tuple[str, ...] = ("mbpp", "mbpp_sanitized")
TRAINING_SPLIT = "train"
_IN_CHUNK = 5000  # ids per IN (...) clause: below SQLite's parameter limit, small statements for Postgres


def _chunks(seq: Sequence[Any], n: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _training_problem_filter():
    """The SQL condition every training-data query carries: train split of a training dataset."""
    return and_(m.Problem.split == TRAINING_SPLIT, m.Dataset.name.in_(TRAINING_DATASETS))


def _first_prompt_expr():
    """``turns.messages[0].content``: the first user message (the problem prompt), extracted in SQL."""
    return m.Turn.messages[0]["content"].as_string()


class VerifierMixin:
    # ------------------------------------------------------------------ model versions
    def add_verifier_version(
        self,
        *,
        name: str,
        base_model: str,
        uri: str,
        config: dict[str, Any],
        metrics: dict[str, Any] | None = None,
        round_id: int | None = None,
        training_set_id: int | None = None,
        parent_id: int | None = None,
    ) -> int:
        """Register a trained verifier (``model_versions`` row, kind ``verifier``) by name: a new row, or the
        same name registered again (a retrained model whose earlier folder was incomplete) updated in place."""
        row = {
            "name": name,
            "kind": "verifier",
            "base_model": base_model,
            "uri": uri,
            "config": config,
            "metrics": metrics or {},
            "round_id": round_id,
            "training_set_id": training_set_id,
            "parent_id": parent_id,
        }
        with self.session() as s:
            kind = s.execute(select(m.ModelVersion.kind).where(m.ModelVersion.name == name)).scalar_one_or_none()
            if kind is not None and kind != "verifier":
                raise MucodeError(f"model version {name!r} exists and is a {kind}, not a verifier")
            self.upsert(
                s, m.ModelVersion.__table__, [row], ["name"],
                ["base_model", "uri", "config", "metrics", "round_id", "training_set_id", "parent_id"],
            )  # fmt: skip
            return s.execute(select(m.ModelVersion.id).where(m.ModelVersion.name == name)).scalar_one()

    def get_verifier(self, ref: int | str, *, required: bool = True) -> dict[str, Any] | None:
        """A verifier model version by id or name, as a dict; NotFound (or None) when there is none."""
        with self.session() as s:
            q = select(m.ModelVersion).where(m.ModelVersion.kind == "verifier",
                                             id_or_name(m.ModelVersion.id, m.ModelVersion.name, ref))
            mv = s.execute(q.order_by(m.ModelVersion.id)).scalars().first()
            if mv is None:
                if required:
                    raise NotFound(f"no verifier {ref!r} (see `mucode verifier list`)")
                return None
            return {
                "id": mv.id,
                "name": mv.name,
                "kind": mv.kind,
                "base_model": mv.base_model,
                "uri": mv.uri,
                "round_id": mv.round_id,
                "training_set_id": mv.training_set_id,
                "config": dict(mv.config or {}),
                "metrics": dict(mv.metrics or {}),
                "created_at": mv.created_at,
            }

    def list_verifiers(self) -> list[dict[str, Any]]:
        with self.session() as s:
            n_scores = (
                select(func.count())
                .where(m.VerifierScore.verifier_id == m.ModelVersion.id)
                .correlate(m.ModelVersion)
                .scalar_subquery()
            )
            rows = s.execute(
                select(m.ModelVersion, n_scores)
                .where(m.ModelVersion.kind == "verifier")
                .order_by(m.ModelVersion.id)
            ).all()
            return [
                {
                    "id": mv.id,
                    "name": mv.name,
                    "base_model": mv.base_model,
                    "uri": mv.uri,
                    "loss": (mv.config or {}).get("loss"),
                    "round_id": mv.round_id,
                    "training_set_id": mv.training_set_id,
                    "scores": n,
                    "created_at": mv.created_at,
                }
                for mv, n in rows
            ]

    def set_verifier_metrics(self, verifier_id: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Merge ``metrics`` (top-level keys replace) into the verifier's stored metrics; returns the result."""
        with self.session() as s:
            mv = s.get(m.ModelVersion, verifier_id, with_for_update=self.is_postgres)
            if mv is None or mv.kind != "verifier":
                raise NotFound(f"no verifier with id {verifier_id}")
            merged = {**(mv.metrics or {}), **metrics}
            s.execute(update(m.ModelVersion).where(m.ModelVersion.id == verifier_id).values(metrics=merged))
            return merged

    # ------------------------------------------------------------------ rounds
    def verifier_round_ids(self, experiment: str, upto_index: int | None = None) -> list[int]:
        """Ids of an experiment's rounds with index <= ``upto_index`` (all when None), in index order:
        the aggregated data a round's verifier is trained on."""
        with self.session() as s:
            exp = s.execute(select(m.Experiment).where(m.Experiment.name == experiment)).scalar_one_or_none()
            if exp is None:
                raise NotFound(f"no experiment {experiment!r}")
            q = select(m.Round.id).where(m.Round.experiment_id == exp.id)
            if upto_index is not None:
                q = q.where(m.Round.index <= upto_index)
            ids = list(s.execute(q.order_by(m.Round.index)).scalars())
            if not ids:
                raise NotFound(f"experiment {experiment!r} has no round" + (
                    f" with index <= {upto_index}" if upto_index is not None else ""))
            return ids

    def verifier_round_info(self, round_id: int) -> dict[str, Any]:
        with self.session() as s:
            row = s.execute(
                select(m.Round.id, m.Round.index, m.Experiment.id, m.Experiment.name)
                .join(m.Experiment, m.Experiment.id == m.Round.experiment_id)
                .where(m.Round.id == round_id)
            ).one_or_none()
            if row is None:
                raise NotFound(f"no round with id {round_id}")
            return {"round_id": row[0], "index": row[1], "experiment_id": row[2], "experiment": row[3]}

    # ------------------------------------------------------------------ training rows
    def verifier_training_rows(
        self,
        round_ids: Sequence[int],
        *,
        problem_ids: Sequence[int] | None = None,
        verifier_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Labelled (first prompt, one response) rows of the finished training rollouts of ``round_ids``.

        One row per chosen candidate of every turn of a rollout with status ``done``: the final turn's label is
        its ``private_passed`` (rows whose final verdict is still NULL are left out), every intermediate turn's
        label is False (docs/method.md §4). Only train-split problems of training datasets, enforced in the
        query. With ``verifier_id`` each row also carries that verifier's ``score`` (None when not scored).
        Ordered by (problem, round index, rollout sample index, turn index): deterministic for seeded draws.
        """
        if not round_ids:
            raise ValueError("round_ids is empty: name the rounds whose rollouts train the verifier")
        last = (  # the final turn of each finished rollout of these rounds
            select(m.Turn.rollout_id.label("rollout_id"), func.max(m.Turn.index).label("last_index"))
            .join(m.Turn.rollout)
            .where(m.Rollout.round_id.in_(list(round_ids)), m.Rollout.status == "done")
            .group_by(m.Turn.rollout_id)
            .subquery()
        )
        is_final = m.Turn.index == last.c.last_index
        cols = [
            m.Candidate.id,
            m.Rollout.problem_id,
            m.Problem.external_id,
            m.Rollout.id,
            m.Round.index,
            m.Rollout.sample_index,
            m.Turn.index,
            is_final,
            m.Candidate.private_passed,
        ]
        q = (
            select(*cols)
            .select_from(m.Candidate)
            .join(m.Candidate.turn).join(m.Turn.rollout)
            .join(last, last.c.rollout_id == m.Rollout.id)
            .join(m.Round, m.Round.id == m.Rollout.round_id)
            .join(m.Problem, m.Problem.id == m.Rollout.problem_id)
            .join(m.Dataset, m.Dataset.id == m.Problem.dataset_id)
            .where(
                m.Rollout.round_id.in_(list(round_ids)),
                m.Rollout.evaluation_id.is_(None),
                m.Rollout.status == "done",
                m.Candidate.chosen.is_(True),
                _training_problem_filter(),
                # a final response must have its oracle verdict; intermediate ones are failures by definition
                or_(~is_final, m.Candidate.private_passed.is_not(None)),
            )
        )
        if verifier_id is not None:
            q = q.add_columns(m.VerifierScore.score).outerjoin(
                m.VerifierScore,
                and_(m.VerifierScore.candidate_id == m.Candidate.id, m.VerifierScore.verifier_id == verifier_id),
            )
        q = q.order_by(m.Rollout.problem_id, m.Round.index, m.Rollout.sample_index, m.Turn.index, m.Candidate.id)
        out: list[dict[str, Any]] = []
        with self.session() as s:
            chunks = [None] if problem_ids is None else list(_chunks(list(problem_ids)))
            for chunk in chunks:
                qq = q if chunk is None else q.where(m.Rollout.problem_id.in_(list(chunk)))
                for r in s.execute(qq):
                    final = bool(r[7])
                    row = {
                        "candidate_id": r[0],
                        "problem_id": r[1],
                        "external_id": r[2],
                        "rollout_id": r[3],
                        "round_index": r[4],
                        "sample_index": r[5],
                        "turn_index": r[6],
                        "is_final": final,
                        "label": bool(r[8]) if final else False,
                    }
                    if verifier_id is not None:
                        row["score"] = r[9]
                    out.append(row)
        if problem_ids is not None:
            out.sort(key=lambda r: (r["problem_id"], r["round_index"], r["sample_index"], r["turn_index"],
                                    r["candidate_id"]))
        return out

    def verifier_candidate_texts(self, candidate_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """candidate id -> (first user message of its trajectory, raw response): the verifier's input."""
        out: dict[int, tuple[str, str]] = {}
        prompt = _first_prompt_expr()
        with self.session() as s:
            for chunk in _chunks(list(candidate_ids)):
                rows = s.execute(
                    select(m.Candidate.id, prompt, m.Candidate.response)
                    .join(m.Candidate.turn)
                    .where(m.Candidate.id.in_(list(chunk)))
                )
                for cid, p, resp in rows:
                    if p is None:
                        raise MucodeError(
                            f"candidate {cid}: its turn's first message has no content (turns.messages[0])"
                        )
                    out[cid] = (p, resp)
        missing = set(candidate_ids) - out.keys()
        if missing:
            raise NotFound(f"{len(missing)} candidate(s) not found, e.g. {sorted(missing)[:5]}")
        return out

    # ------------------------------------------------------------------ training sets and pairs
    def get_verifier_training_set(self, ref: int | str, *, required: bool = True) -> dict[str, Any] | None:
        with self.session() as s:
            q = select(m.TrainingSet).where(id_or_name(m.TrainingSet.id, m.TrainingSet.name, ref))
            ts = s.execute(q.order_by(m.TrainingSet.id)).scalars().first()
            if ts is None or ts.kind not in ("bt", "bce"):
                if required:
                    raise NotFound(f"no verifier training set {ref!r}")
                return None
            n_pairs = s.execute(
                select(func.count()).select_from(m.VerifierPair).where(m.VerifierPair.training_set_id == ts.id)
            ).scalar_one()
            return training_set_dict(ts, num_pairs=n_pairs, created_at=ts.created_at)

    def create_verifier_training_set(
        self,
        *,
        name: str,
        kind: str,
        config: dict[str, Any],
        stats: dict[str, Any],
        pairs: Sequence[dict[str, Any]] = (),
        experiment_id: int | None = None,
        round_id: int | None = None,
    ) -> tuple[int, bool]:
        """Write a training set and its drawn pairs in one transaction; idempotent by name.

        ``pairs``: dicts with problem_id, pair_index, chosen_candidate_id, rejected_candidate_id.
        Returns (id, created). An existing set of that name is returned untouched (created False).
        """
        if kind not in ("bt", "bce"):
            raise ValueError(f"verifier training set kind must be bt or bce, not {kind!r}")
        with self.session() as s:
            inserted = self.insert_ignore(
                s,
                m.TrainingSet.__table__,
                [{"name": name, "kind": kind, "config": config, "stats": stats,
                  "experiment_id": experiment_id, "round_id": round_id}],
                ["name"],
                returning=[m.TrainingSet.id],
            )
            if not inserted:
                ts = s.execute(select(m.TrainingSet).where(m.TrainingSet.name == name)).scalar_one()
                if ts.kind != kind:
                    raise MucodeError(f"training set {name!r} exists with kind {ts.kind}, not {kind}")
                return ts.id, False
            ts_id = inserted[0][0]
            rows = [{**p, "training_set_id": ts_id} for p in pairs]
            self.insert_ignore(
                s, m.VerifierPair.__table__, rows, ["training_set_id", "problem_id", "pair_index"]
            )
            return ts_id, True

    def verifier_pairs(self, training_set_id: int) -> list[dict[str, Any]]:
        """The stored pairs of a BT training set, in (problem, pair index) order."""
        with self.session() as s:
            rows = s.execute(
                select(m.VerifierPair.problem_id, m.VerifierPair.pair_index, m.VerifierPair.chosen_candidate_id,
                       m.VerifierPair.rejected_candidate_id)
                .where(m.VerifierPair.training_set_id == training_set_id)
                .order_by(m.VerifierPair.problem_id, m.VerifierPair.pair_index)
            ).all()
        return [
            {"problem_id": p, "pair_index": i, "chosen_candidate_id": c, "rejected_candidate_id": r}
            for p, i, c, r in rows
        ]

    def verifier_training_set_leaks(self, training_set_id: int) -> list[int]:
        """Candidate ids of a training set (pairs, or BCE rows in its config) whose problem is not a train-split
        problem of a training dataset, or whose pair names another problem. Empty for every set this module
        builds; trainers refuse to start otherwise."""
        ts = self.get_verifier_training_set(training_set_id)
        with self.session() as s:
            if ts["kind"] == "bt":
                ids: list[int] = []
                for col in (m.VerifierPair.chosen_candidate_id, m.VerifierPair.rejected_candidate_id):
                    q = (
                        select(col)
                        .join(m.Candidate, m.Candidate.id == col)
                        .join(m.Candidate.turn).join(m.Turn.rollout)
                        .join(m.Problem, m.Problem.id == m.Rollout.problem_id)
                        .join(m.Dataset, m.Dataset.id == m.Problem.dataset_id)
                        .where(
                            m.VerifierPair.training_set_id == training_set_id,
                            or_(
                                ~_training_problem_filter(),
                                m.Rollout.round_id.is_(None),
                                m.Rollout.problem_id != m.VerifierPair.problem_id,
                            ),
                        )
                    )
                    ids.extend(s.execute(q).scalars())
                return sorted(set(ids))
            cids = [int(c) for c, _ in ts["config"].get("rows", [])]
            bad: list[int] = []
            for chunk in _chunks(cids):
                ok = set(
                    s.execute(
                        select(m.Candidate.id)
                        .join(m.Candidate.turn).join(m.Turn.rollout)
                        .join(m.Problem, m.Problem.id == m.Rollout.problem_id)
                        .join(m.Dataset, m.Dataset.id == m.Problem.dataset_id)
                        .where(
                            m.Candidate.id.in_(list(chunk)),
                            _training_problem_filter(),
                            m.Rollout.round_id.is_not(None),
                        )
                    ).scalars()
                )
                bad.extend(c for c in chunk if c not in ok)
            return sorted(set(bad))

    # ------------------------------------------------------------------ scores
    def unscored_candidate_ids(
        self,
        verifier_id: int,
        *,
        candidate_ids: Sequence[int] | None = None,
        round_id: int | None = None,
        evaluation_id: int | None = None,
        all_candidates: bool = False,
        limit: int | None = None,
    ) -> list[int]:
        """Candidates (any turn, chosen or not) with no score from ``verifier_id``, in id order.

        Select by explicit ids, by the round or evaluation that made them, or everything (``all_candidates``).
        """
        if candidate_ids is None and round_id is None and evaluation_id is None and not all_candidates:
            raise ValueError("say which candidates: candidate_ids, round_id, evaluation_id or all_candidates")
        scored = exists().where(
            m.VerifierScore.candidate_id == m.Candidate.id, m.VerifierScore.verifier_id == verifier_id
        )
        q = select(m.Candidate.id).where(~scored)
        if round_id is not None or evaluation_id is not None:
            q = q.join(m.Candidate.turn).join(m.Turn.rollout)
            if round_id is not None:
                q = q.where(m.Rollout.round_id == round_id)
            if evaluation_id is not None:
                q = q.where(m.Rollout.evaluation_id == evaluation_id)
        q = q.order_by(m.Candidate.id)
        out: list[int] = []
        with self.session() as s:
            if candidate_ids is None:
                out = list(s.execute(q.limit(limit) if limit else q).scalars())
            else:
                for chunk in _chunks(sorted(set(candidate_ids))):
                    out.extend(s.execute(q.where(m.Candidate.id.in_(list(chunk)))).scalars())
                out = out[:limit] if limit else out
        return out

    def add_verifier_scores(self, verifier_id: int, scores: Iterable[tuple[int, float]]) -> int:
        """Bulk ``INSERT ... ON CONFLICT DO NOTHING`` of (candidate id, score); returns rows actually written."""
        rows = [{"candidate_id": int(c), "verifier_id": verifier_id, "score": float(v)} for c, v in scores]
        if not rows:
            return 0
        with self.session() as s:
            done = self.insert_ignore(
                s,
                m.VerifierScore.__table__,
                rows,
                ["candidate_id", "verifier_id"],
                returning=[m.VerifierScore.candidate_id],
            )
        return len(done)

    def verifier_scores(self, verifier_id: int, candidate_ids: Sequence[int] | None = None) -> dict[int, float]:
        q = select(m.VerifierScore.candidate_id, m.VerifierScore.score).where(
            m.VerifierScore.verifier_id == verifier_id
        )
        with self.session() as s:
            if candidate_ids is None:
                return dict(s.execute(q).all())
            out: dict[int, float] = {}
            for chunk in _chunks(list(candidate_ids)):
                out.update(s.execute(q.where(m.VerifierScore.candidate_id.in_(list(chunk)))).all())
            return out

    def count_verifier_scores(self, verifier_id: int) -> int:
        with self.session() as s:
            return s.execute(
                select(func.count()).select_from(m.VerifierScore).where(m.VerifierScore.verifier_id == verifier_id)
            ).scalar_one()

    # ------------------------------------------------------------------ metric rows
    def verifier_eval_rows(
        self,
        *,
        verifier_id: int | None = None,
        dataset: str = "mbpp",
        split: str = "test",
        evaluation_ids: Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        """Executed candidates of evaluation rollouts on ``dataset``/``split`` (default MBPP test): every
        candidate with a private verdict (its oracle label), grouped by turn for Best-of-N metrics, with the
        verifier's score when ``verifier_id`` is given (None when not scored)."""
        cols = [
            m.Candidate.id,
            m.Rollout.problem_id,
            m.Rollout.evaluation_id,
            m.Rollout.id,
            m.Turn.id,
            m.Turn.index,
            m.Candidate.private_passed,
        ]
        q = (
            select(*cols)
            .select_from(m.Candidate)
            .join(m.Candidate.turn).join(m.Turn.rollout)
            .join(m.Problem, m.Problem.id == m.Rollout.problem_id)
            .join(m.Dataset, m.Dataset.id == m.Problem.dataset_id)
            .where(
                m.Rollout.evaluation_id.is_not(None),
                m.Candidate.private_passed.is_not(None),
                m.Dataset.name == dataset,
                m.Problem.split == split,
            )
        )
        if evaluation_ids is not None:
            q = q.where(m.Rollout.evaluation_id.in_(list(evaluation_ids)))
        if verifier_id is not None:
            q = q.add_columns(m.VerifierScore.score).outerjoin(
                m.VerifierScore,
                and_(m.VerifierScore.candidate_id == m.Candidate.id, m.VerifierScore.verifier_id == verifier_id),
            )
        q = q.order_by(m.Turn.id, m.Candidate.sample_index, m.Candidate.id)
        with self.session() as s:
            rows = s.execute(q).all()
        out = []
        for r in rows:
            row = {
                "candidate_id": r[0],
                "problem_id": r[1],
                "evaluation_id": r[2],
                "rollout_id": r[3],
                "turn_id": r[4],
                "turn_index": r[5],
                "label": bool(r[6]),
            }
            if verifier_id is not None:
                row["score"] = r[7]
            out.append(row)
        return out
