"""Store queries: jobs, the record of every queued unit of work (issues 4, 7).

A job is identified by an idempotency ``key`` chosen by whoever queues it (e.g.
``collect/e3/x1/b0/sample/t1``). Queueing the same key twice keeps one row; a redelivered job increments
``attempts`` when it starts. Jobs are a record for humans and for ``status``: resuming work is always decided
from the data rows (rollouts, turns, candidates), never from job states, so a lost job row loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update

from app.db import models as m

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
            attempts = s.execute(select(m.Job.attempts).where(m.Job.key == key)).scalar_one_or_none()
            return int(attempts or 0)

    def job_done(self, key: str, result: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            values: dict[str, Any] = {"state": "done", "finished_at": _utcnow(), "error": None}
            if result is not None:
                values["result"] = result
            s.execute(update(m.Job).where(m.Job.key == key).values(**values))

    def job_failed(self, key: str, error: str) -> None:
        with self.session() as s:
            s.execute(
                update(m.Job)
                .where(m.Job.key == key)
                .values(state="failed", finished_at=_utcnow(), error=error[-_ERROR_CAP:])
            )

    def supersede_job(self, key: str, reason: str) -> bool:
        """Mark a job that was queued or running when a resume handed its work to a new attempt (its worker was
        killed, or it is still waiting in a queue). Not a failure: the new attempt does the work."""
        with self.session() as s:
            res = s.execute(
                update(m.Job)
                .where(m.Job.key == key, m.Job.state.in_(["queued", "running"]))
                .values(state="superseded", finished_at=_utcnow(), error=reason[-_ERROR_CAP:])
            )
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
