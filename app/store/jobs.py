"""Store queries: jobs, the record of every queued unit of work.

A job is identified by an idempotency ``key`` chosen by whoever queues it (e.g.
``collect/e3/x1/b0/sample/t1``). Queueing the same key twice keeps one row; a redelivered job increments
``attempts`` when it starts. Jobs are a record for humans and for ``status``: resuming work is always decided
from the data rows (rollouts, turns, candidates), never from job states, so a lost job row loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select, update

from app import liveness
from app.db import models as m
from app.errors import clip

_ERROR_CAP = 8000


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _owner_where(round_id: int | None, evaluation_id: int | None) -> list[Any]:
    where: list[Any] = []
    if round_id is not None:
        where.append(m.Job.round_id == round_id)
    if evaluation_id is not None:
        where.append(m.Job.evaluation_id == evaluation_id)
    return where


def _whole_owner(round_id: int | None, evaluation_id: int | None) -> Any:
    """The jobs of a round with its evaluations' (by ``round_id``), or of one evaluation."""
    if round_id is not None:
        evals = select(m.Evaluation.id).where(m.Evaluation.round_id == round_id)
        return or_(m.Job.round_id == round_id, m.Job.evaluation_id.in_(evals))
    return m.Job.evaluation_id == evaluation_id


class JobsMixin:
    def record_job(
        self,
        key: str,
        kind: str,
        queue: str,
        payload: dict[str, Any] | None = None,
        *,
        round_id: int | None = None,
        evaluation_id: int | None = None,
        requeue: bool = True,
    ) -> bool:
        """Record that ``key`` is queued. Returns True when the row is new.

        An existing row keeps its attempts and history; with ``requeue`` a finished or failed row goes back
        to ``queued`` (the job was submitted again), a running one is left alone.
        """
        row = {
            "key": key,
            "kind": kind,
            "queue": queue,
            "state": "queued",
            "round_id": round_id,
            "evaluation_id": evaluation_id,
            "payload": payload or {},
            "result": {},
            "attempts": 0,
        }
        with self.session() as s:
            new = self.insert_ignore(s, m.Job.__table__, [row], ["key"], returning=[m.Job.id])
            if not new and requeue:
                s.execute(
                    update(m.Job)
                    .where(m.Job.key == key, m.Job.state != "running")
                    .values(state="queued", error=None, queued_at=_utcnow(), finished_at=None)
                )
            return bool(new)

    def job_started(self, key: str, *, worker: str | None = None, **record: Any) -> int:
        """Mark ``key`` running (recording it first if nobody did) and return its attempt number."""
        with self.session() as s:
            if record:
                self.insert_ignore(
                    s,
                    m.Job.__table__,
                    [
                        {
                            "key": key,
                            "kind": record.get("kind", "job"),
                            "queue": record.get("queue", "control"),
                            "state": "queued",
                            "round_id": record.get("round_id"),
                            "evaluation_id": record.get("evaluation_id"),
                            "payload": record.get("payload") or {},
                            "result": {},
                            "attempts": 0,
                        }
                    ],
                    ["key"],
                )
            s.execute(
                update(m.Job)
                .where(m.Job.key == key)
                .values(
                    state="running",
                    attempts=m.Job.attempts + 1,
                    started_at=_utcnow(),
                    finished_at=None,
                    worker=(worker or "")[:255] or None,
                    error=None,
                )
            )
            row = s.execute(select(m.Job.attempts, m.Job.round_id, m.Job.evaluation_id)
                            .where(m.Job.key == key)).one_or_none()
        if row is None:
            return 0
        liveness.started(key, round_id=row.round_id, evaluation_id=row.evaluation_id)
        return int(row.attempts or 0)

    def job_done(self, key: str, result: dict[str, Any] | None = None) -> None:
        """Mark ``key`` done, unless a resume superseded it meanwhile (its work belongs to the new attempt)."""
        with self.session() as s:
            values: dict[str, Any] = {"state": "done", "finished_at": _utcnow(), "error": None}
            if result is not None:
                values["result"] = result
            s.execute(update(m.Job).where(m.Job.key == key, m.Job.state != "superseded").values(**values))
        liveness.finished(key)

    def job_failed(self, key: str, error: str) -> None:
        with self.session() as s:
            s.execute(
                update(m.Job)
                .where(m.Job.key == key, m.Job.state != "superseded")
                .values(state="failed", finished_at=_utcnow(), error=clip(error, _ERROR_CAP))
            )
        liveness.finished(key)

    def supersede_job(self, key: str, reason: str, *, failed_too: bool = False) -> bool:
        """Mark a job that was queued or running when a resume handed its work to a new attempt (its worker was
        killed, or it is still waiting in a queue). Not a failure: the new attempt does the work. ``failed_too``:
        a failed job that the resume retries is superseded as well (its error stays on the row)."""
        states = ["queued", "running", "failed"] if failed_too else ["queued", "running"]
        with self.session() as s:
            row = s.execute(select(m.Job.state, m.Job.error).where(m.Job.key == key)).one_or_none()
            if row is None or row.state not in states:
                return False
            note = reason if row.state != "failed" else f"{reason}; it had failed: {row.error or ''}"
            res = s.execute(
                update(m.Job)
                .where(m.Job.key == key, m.Job.state.in_(states))
                .values(state="superseded", finished_at=_utcnow(), error=clip(note, _ERROR_CAP))
            )
        liveness.finished(key)
        return res.rowcount == 1

    def claim_job(self, key: str, *, from_states: Iterable[str], to_state: str) -> bool:
        """Atomically move ``key`` from one of ``from_states`` to ``to_state``; True for the one caller that
        did it (a compare-and-set: two workers racing to finish the same thing, one wins)."""
        with self.session() as s:
            res = s.execute(
                update(m.Job)
                .where(m.Job.key == key, m.Job.state.in_(list(from_states)))
                .values(state=to_state, finished_at=None if to_state in ("queued", "running") else _utcnow())
            )
            return res.rowcount == 1

    def in_flight_jobs(self, round_id: int | None = None, evaluation_id: int | None = None) -> list[m.Job]:
        """Queued or running jobs of a round (its collections and its evaluations' included) or of a standalone
        evaluation: what the healer checks against the live workers' beacons."""
        q = (select(m.Job).where(_whole_owner(round_id, evaluation_id), m.Job.state.in_(["queued", "running"]))
             .order_by(m.Job.id))
        with self.session() as s:
            return list(s.execute(q).scalars())

    def last_job_activity(self, round_id: int | None = None, evaluation_id: int | None = None) -> datetime | None:
        """When a job of the round (or standalone evaluation) last was queued, started or ended."""
        q = select(func.max(m.Job.queued_at), func.max(m.Job.started_at), func.max(m.Job.finished_at)).where(
            _whole_owner(round_id, evaluation_id))
        with self.session() as s:
            times = s.execute(q).one()
        times = [t if t is None or t.tzinfo else t.replace(tzinfo=UTC) for t in times]
        return max((t for t in times if t is not None), default=None)

    def running_owners(self) -> tuple[list[int], list[int]]:
        """(rounds that are running, standalone evaluations that are running): what the healer watches."""
        with self.session() as s:
            rounds = s.execute(select(m.Round.id).where(m.Round.status == "running").order_by(m.Round.id))
            evals = s.execute(select(m.Evaluation.id).where(m.Evaluation.status == "running",
                                                            m.Evaluation.round_id.is_(None)).order_by(m.Evaluation.id))
            return [int(i) for i in rounds.scalars()], [int(i) for i in evals.scalars()]

    def bump_job_attempts(self, key: str) -> int:
        """Increment ``attempts`` of an existing job and return the new value (used as a generation)."""
        with self.session() as s:
            s.execute(update(m.Job).where(m.Job.key == key).values(attempts=m.Job.attempts + 1))
            return int(s.execute(select(m.Job.attempts).where(m.Job.key == key)).scalar_one())

    def update_job(self, key: str, **values: Any) -> None:
        with self.session() as s:
            s.execute(update(m.Job).where(m.Job.key == key).values(**values))

    def get_job(self, key: str) -> m.Job | None:
        with self.session() as s:
            return s.execute(select(m.Job).where(m.Job.key == key)).scalar_one_or_none()

    def list_jobs(
        self,
        *,
        round_id: int | None = None,
        evaluation_id: int | None = None,
        kinds: Iterable[str] | None = None,
        states: Iterable[str] | None = None,
        key_prefix: str | None = None,
        limit: int | None = None,
    ) -> list[m.Job]:
        q = select(m.Job).where(*_owner_where(round_id, evaluation_id))
        if kinds is not None:
            q = q.where(m.Job.kind.in_(list(kinds)))
        if states is not None:
            q = q.where(m.Job.state.in_(list(states)))
        if key_prefix is not None:
            q = q.where(m.Job.key.startswith(key_prefix, autoescape=True))
        q = q.order_by(m.Job.id)
        if limit is not None:
            q = q.limit(limit)
        with self.session() as s:
            return list(s.execute(q).scalars())

    def unfinished_jobs(
        self, *, round_id: int | None = None, evaluation_id: int | None = None, key_prefix: str | None = None
    ) -> list[m.Job]:
        """Jobs queued or running (or failed) that never finished: the candidates for missing work."""
        return self.list_jobs(
            round_id=round_id,
            evaluation_id=evaluation_id,
            states=("queued", "running", "failed"),
            key_prefix=key_prefix,
        )

    def job_counts(
        self,
        *,
        round_id: int | None = None,
        evaluation_id: int | None = None,
        key_prefix: str | None = None,
    ) -> dict[str, dict[str, int]]:
        """{kind: {state: count}} for an owner (and/or a key prefix)."""
        q = select(m.Job.kind, m.Job.state, func.count()).where(*_owner_where(round_id, evaluation_id))
        if key_prefix is not None:
            q = q.where(m.Job.key.startswith(key_prefix, autoescape=True))
        q = q.group_by(m.Job.kind, m.Job.state)
        out: dict[str, dict[str, int]] = {}
        with self.session() as s:
            for kind, state, n in s.execute(q):
                out.setdefault(kind, {})[state] = int(n)
        return out
