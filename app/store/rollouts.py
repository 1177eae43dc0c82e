"""Store queries: rollouts, turns and candidates; the state of a collection.

A *collection* is the set of rollouts of one owner: a round (training rollouts) or an evaluation (chains of
a greedy/BoN evaluation, or a standalone ``mucode rollouts collect``). The pipeline (workers/collect.py)
reads the state of a batch of rollouts, decides what is missing, and writes it back here; every write is
idempotent (natural keys + ``ON CONFLICT DO NOTHING``, or updates to the same values), so a redelivered or
resumed job changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, select, update

from app.db import models as m


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Owner:
    """Who a collection's rollouts belong to: exactly one of a round or an evaluation."""

    round_id: int | None = None
    evaluation_id: int | None = None

    def __post_init__(self) -> None:
        if (self.round_id is None) == (self.evaluation_id is None):
            raise ValueError("an owner is exactly one of round_id or evaluation_id")

    @property
    def key(self) -> str:
        return f"r{self.round_id}" if self.round_id is not None else f"e{self.evaluation_id}"

    def as_dict(self) -> dict[str, int]:
        return (
            {"round_id": self.round_id}
            if self.round_id is not None
            else {"evaluation_id": self.evaluation_id}
        )

    @classmethod
    def of(cls, value: Owner | dict[str, Any]) -> Owner:
        if isinstance(value, Owner):
            return value
        return cls(round_id=value.get("round_id"), evaluation_id=value.get("evaluation_id"))

    def rollout_where(self) -> Any:
        if self.round_id is not None:
            return m.Rollout.round_id == self.round_id
        return m.Rollout.evaluation_id == self.evaluation_id


@dataclass
class CandidateState:
    id: int
    sample_index: int
    response: str
    code_hash: str
    public_passed: bool | None
    private_passed: bool | None
    chosen: bool
    completion_tokens: int | None = None
    score: float | None = None  # the collection's verifier score, when it has one

    @property
    def executed(self) -> bool:
        return self.public_passed is not None and self.private_passed is not None


@dataclass
class TurnState:
    id: int
    index: int
    messages: list[dict[str, Any]]
    feedback: str | None
    candidates: list[CandidateState] = field(default_factory=list)


@dataclass
class RolloutState:
    id: int
    problem_id: int
    sample_index: int
    seed: int
    status: str
    num_turns: int
    generator_id: int | None
    last_turn: TurnState | None = None


class RolloutsMixin:
    # -- creation -----------------------------------------------------------------------------------
    def create_rollouts(self, owner: Owner, rows: Sequence[dict[str, Any]]) -> int:
        """Insert rollouts ``{problem_id, sample_index, seed, generator_id}`` for ``owner``; existing ones
        (same problem and sample index) are kept untouched. Returns the number of rows inserted."""
        owner = Owner.of(owner)
        full = [
            {
                **owner.as_dict(),
                "problem_id": r["problem_id"],
                "sample_index": r["sample_index"],
                "seed": int(r["seed"]),
                "generator_id": r.get("generator_id"),
                "status": "active",
                "num_turns": 0,
            }
            for r in rows
        ]
        with self.session() as s:
            before = s.execute(
                select(func.count()).select_from(m.Rollout).where(owner.rollout_where())
            ).scalar_one()
            self.add_rollouts(full, s=s)
            after = s.execute(
                select(func.count()).select_from(m.Rollout).where(owner.rollout_where())
            ).scalar_one()
            return int(after) - int(before)

    def collection_rollouts(self, owner: Owner) -> list[tuple[int, str]]:
        """(id, status) of every rollout of ``owner`` in batch order: (problem_id, sample_index).

        Batches are consecutive chunks of this list, so they are the same every time they are computed.
        """
        owner = Owner.of(owner)
        q = (
            select(m.Rollout.id, m.Rollout.status)
            .where(owner.rollout_where())
            .order_by(m.Rollout.problem_id, m.Rollout.sample_index)
        )
        with self.session() as s:
            return [(int(i), st) for i, st in s.execute(q)]

    def collection_problems(self, problem_ids: Iterable[int]) -> dict[int, m.Problem]:
        ids = sorted(set(problem_ids))
        if not ids:
            return {}
        with self.session() as s:
            return {p.id: p for p in s.execute(select(m.Problem).where(m.Problem.id.in_(ids))).scalars()}

    # -- the state of a batch -------------------------------------------------------------------------
    def batch_state(
        self, rollout_ids: Sequence[int], *, verifier_id: int | None = None
    ) -> list[RolloutState]:
        """Each rollout of the batch with its last turn and that turn's candidates (and their verifier
        scores when ``verifier_id`` is given), in the order of ``rollout_ids``."""
        ids = list(rollout_ids)
        if not ids:
            return []
        with self.session() as s:
            rows = s.execute(
                select(m.Rollout.id, m.Rollout.problem_id, m.Rollout.sample_index, m.Rollout.seed, m.Rollout.status,
                       m.Rollout.num_turns, m.Rollout.generator_id).where(m.Rollout.id.in_(ids))
            ).all()
            states = {
                r.id: RolloutState(
                    id=r.id,
                    problem_id=r.problem_id,
                    sample_index=r.sample_index,
                    seed=int(r.seed),
                    status=r.status,
                    num_turns=r.num_turns,
                    generator_id=r.generator_id,
                )
                for r in rows
            }
            last = (
                select(m.Turn.rollout_id, func.max(m.Turn.index).label("last"))
                .where(m.Turn.rollout_id.in_(ids))
                .group_by(m.Turn.rollout_id)
                .subquery()
            )
            turns = s.execute(
                select(m.Turn.id, m.Turn.rollout_id, m.Turn.index, m.Turn.messages, m.Turn.feedback).join(
                    last, and_(m.Turn.rollout_id == last.c.rollout_id, m.Turn.index == last.c.last)
                )
            ).all()
            by_turn: dict[int, TurnState] = {}
            for t in turns:
                ts = TurnState(id=t.id, index=t.index, messages=list(t.messages), feedback=t.feedback)
                by_turn[t.id] = ts
                states[t.rollout_id].last_turn = ts
            if by_turn:
                cols = [
                    m.Candidate.id,
                    m.Candidate.turn_id,
                    m.Candidate.sample_index,
                    m.Candidate.response,
                    m.Candidate.code_hash,
                    m.Candidate.public_passed,
                    m.Candidate.private_passed,
                    m.Candidate.chosen,
                    m.Candidate.completion_tokens,
                ]
                q = select(*cols).where(m.Candidate.turn_id.in_(list(by_turn)))
                if verifier_id is not None:
                    q = q.add_columns(m.VerifierScore.score).outerjoin(
                        m.VerifierScore,
                        and_(
                            m.VerifierScore.candidate_id == m.Candidate.id,
                            m.VerifierScore.verifier_id == verifier_id,
                        ),
                    )
                for c in s.execute(q.order_by(m.Candidate.turn_id, m.Candidate.sample_index)):
                    by_turn[c.turn_id].candidates.append(
                        CandidateState(
                            id=c.id,
                            sample_index=c.sample_index,
                            response=c.response,
                            code_hash=c.code_hash,
                            public_passed=c.public_passed,
                            private_passed=c.private_passed,
                            chosen=c.chosen,
                            completion_tokens=c.completion_tokens,
                            score=(c.score if verifier_id is not None else None),
                        )
                    )
        return [states[i] for i in ids if i in states]

    def public_feedback(self, candidate_ids: Iterable[int], *, harness_tag: str | None = None
                        ) -> dict[int, dict[str, Any]]:
        """``{candidate_id: {"status", "feedback"}}``: the public-suite execution of each candidate's code
        (from the execution cache; ``app.env.feedback_text`` turns it into the text the model sees).
        ``harness_tag``: only executions made with that harness (``app.harness``: the part of the sandbox
        version after its first "+"; "" = the legacy harness), whatever the sandbox's own version.

        Where a code has several public executions (sandbox versions), a real verdict beats a
        ``sandbox_error`` and the newest wins.
        """
        ids = sorted(set(candidate_ids))
        if not ids:
            return {}
        q = (
            select(m.Candidate.id, m.Execution.feedback, m.Execution.status, m.Execution.id.label("eid"))
            .join(m.Candidate.turn).join(m.Turn.rollout)
            .join(m.Problem, m.Problem.id == m.Rollout.problem_id)
            .join(
                m.Execution,
                and_(
                    m.Execution.code_hash == m.Candidate.code_hash,
                    m.Execution.suite_hash == m.Problem.public_suite_hash,
                    m.Execution.suite_kind == "public",
                ),
            )
            .where(m.Candidate.id.in_(ids))
        )
        q = q.add_columns(m.Execution.sandbox_version)
        best: dict[int, tuple[tuple[int, int], dict[str, Any]]] = {}
        with self.session() as s:
            for cid, feedback, status, eid, version in s.execute(q):
                if harness_tag is not None and (version.partition("+")[2] != harness_tag):
                    continue
                rank = (0 if status == "sandbox_error" else 1, int(eid))
                if cid not in best or rank > best[cid][0]:
                    best[cid] = (rank, {"status": status, "feedback": feedback or ""})
        return {cid: ex for cid, (_, ex) in best.items()}

    # -- writes of the advance step --------------------------------------------------------------------
    def open_turns(self, rows: Sequence[dict[str, Any]]) -> None:
        """Open turns ``{rollout_id, index, messages}`` (existing turns are kept) and set ``num_turns``."""
        if not rows:
            return
        with self.session() as s:
            self._open_turns(s, rows)

    def _open_turns(self, s: Any, rows: Sequence[dict[str, Any]]) -> None:
        self.add_turns(
            [{"rollout_id": r["rollout_id"], "index": r["index"], "messages": r["messages"]} for r in rows],
            s=s,
        )
        now = _utcnow()
        s.execute(
            update(m.Rollout),
            [{"id": r["rollout_id"], "num_turns": r["index"], "updated_at": now} for r in rows],
        )

    def advance_batch(
        self,
        *,
        chosen: dict[int, int] | None = None,
        feedback: dict[int, str] | None = None,
        finish: Sequence[dict[str, Any]] = (),
        open_turns: Sequence[dict[str, Any]] = (),
    ) -> None:
        """One transaction for the decisions on a batch after its turns were executed:

        - ``chosen``: {turn_id: candidate_id}; every other candidate of those turns gets ``chosen = false``;
        - ``feedback``: {turn_id: the chosen candidate's public feedback};
        - ``finish``: ``{rollout_id, final_label, public_passed}`` -> status done;
        - ``open_turns``: ``{rollout_id, index, messages}`` for the rollouts that continue.
        """
        chosen = chosen or {}
        feedback = feedback or {}
        with self.session() as s:
            if chosen:
                s.execute(
                    update(m.Candidate)
                    .where(m.Candidate.turn_id.in_(list(chosen)))
                    .values(chosen=m.Candidate.id.in_(list(chosen.values())))
                    .execution_options(synchronize_session=False)
                )
            if feedback:
                s.execute(update(m.Turn), [{"id": t, "feedback": fb} for t, fb in feedback.items()])
            if finish:
                now = _utcnow()
                s.execute(
                    update(m.Rollout),
                    [
                        {
                            "id": f["rollout_id"],
                            "status": "done",
                            "final_label": f["final_label"],
                            "public_passed": f["public_passed"],
                            "updated_at": now,
                        }
                        for f in finish
                    ],
                )
            if open_turns:
                self._open_turns(s, open_turns)

    # -- reading a collection --------------------------------------------------------------------------
    def collection_counts(self, owner: Owner) -> dict[str, Any]:
        """Counts for ``status``: rollouts by state and outcome, turns, candidates, executions, tokens."""
        owner = Owner.of(owner)
        where = owner.rollout_where()
        with self.session() as s:
            r = s.execute(
                select(
                    func.count(),
                    func.sum(case((m.Rollout.status == "active", 1), else_=0)),
                    func.sum(case((m.Rollout.final_label.is_(True), 1), else_=0)),
                    func.sum(case((m.Rollout.public_passed.is_(True), 1), else_=0)),
                ).where(where)
            ).one()
            turns_by_n = dict(
                s.execute(
                    select(m.Rollout.num_turns, func.count())
                    .where(where, m.Rollout.status == "done")
                    .group_by(m.Rollout.num_turns)
                ).all()
            )
            t = s.execute(
                select(func.count())
                .select_from(m.Turn)
                .join(m.Turn.rollout)
                .where(where)
            ).scalar_one()
            c = s.execute(
                select(
                    func.count(),
                    func.sum(
                        case(
                            (
                                and_(
                                    m.Candidate.public_passed.isnot(None),
                                    m.Candidate.private_passed.isnot(None),
                                ),
                                1,
                            ),
                            else_=0,
                        )
                    ),
                    func.coalesce(func.sum(m.Candidate.completion_tokens), 0),
                    func.coalesce(func.sum(m.Candidate.prompt_tokens), 0),
                )
                .select_from(m.Candidate)
                .join(m.Candidate.turn).join(m.Turn.rollout)
                .where(where)
            ).one()
        total, active = int(r[0] or 0), int(r[1] or 0)
        return {
            "rollouts": total,
            "active": active,
            "done": total - active,
            "solved": int(r[2] or 0),
            "public_passed": int(r[3] or 0),
            "done_by_turns": {int(k): int(v) for k, v in sorted(turns_by_n.items())},
            "turns": int(t or 0),
            "candidates": int(c[0] or 0),
            "executed": int(c[1] or 0),
            "completion_tokens": int(c[2] or 0),
            "prompt_tokens": int(c[3] or 0),
        }

    def collection_samples(self, owner: Owner) -> list[dict[str, Any]]:
        """Every sampled turn of a collection: its messages, the sampling record of its candidates and
        their completion tokens (benchmarks replay these through the bare backend)."""
        owner = Owner.of(owner)
        q = (
            select(
                m.Turn.id,
                m.Turn.rollout_id,
                m.Turn.index,
                m.Turn.messages,
                m.Candidate.sample_index,
                m.Candidate.sampling,
                m.Candidate.completion_tokens,
            )
            .join(m.Turn.rollout).join(m.Turn.candidates)
            .where(owner.rollout_where())
            .order_by(m.Turn.index, m.Rollout.problem_id, m.Rollout.sample_index, m.Candidate.sample_index)
        )
        out: dict[int, dict[str, Any]] = {}
        with self.session() as s:
            for tid, rid, idx, msgs, _sample_index, sampling, ntok in s.execute(q):
                d = out.setdefault(
                    tid,
                    {
                        "turn_id": tid,
                        "rollout_id": rid,
                        "index": idx,
                        "messages": msgs,
                        "sampling": sampling,
                        "completion_tokens": [],
                    },
                )
                d["completion_tokens"].append(ntok or 0)
        return list(out.values())
