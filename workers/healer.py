"""The healer: a round or an evaluation whose work was lost is found and queued again, without a human.

Jobs ride out outages themselves (``workers/healing.py``); what they cannot ride out is their own loss: a worker
killed with SIGKILL (a Redis broker gives its unacknowledged message back only after the visibility timeout, a
day), a message lost with a broker restarted without its data, a job that died while the database was down and
could not say so. Its row then says "queued" or "running" forever and the round waits.

Every ``Settings.healer_sweep_s`` one healer (a thread of each ``mucode worker`` that serves ``control``; the one
holding a lock on the broker acts) compares the store with what is really happening:

- what is in flight: the jobs the live workers' beacons list (``app.liveness``), and the messages waiting per queue;
- a running job row that no live worker runs, started more than ``Settings.healer_grace_s`` ago (longer than a
  worker's silence before its beacon expires), is **orphaned**;
- a queued job row, queued more than the grace ago, whose queue is empty and that no worker runs, is **lost**;
- a running round with nothing queued, running or waiting for the grace is **idle** (its ``round_step`` message
  was lost).

Rows of attempts or generations that a resume already replaced are marked superseded on the spot. A round found
orphaned, lost or idle on two sweeps in a row is resumed (``resume_round``: the first unfinished step again, a
collection as a new generation that queues only missing work; finished work is kept, nothing is duplicated); a
standalone evaluation has its collection resumed. A round healed ``MAX_HEALS`` times within an hour is failed
instead, with the reason, for a human to look at (``round resume`` stays for real failures).

Worst case from the fault (or from the fault clearing) to the work queued again: the grace + 2 sweeps (100 s
with the defaults).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.rounds import StepRecord

if TYPE_CHECKING:
    from app.store import Store

log = logging.getLogger("mucode.healer")

MAX_HEALS = 6  # per round and hour
LOCK_KEY = "mucode:healer"


@dataclass
class InFlight:
    """What is really happening: job keys and owners the live workers run, workers alive, messages per queue."""

    keys: set[str] = field(default_factory=set)
    rounds: set[int] = field(default_factory=set)
    evaluations: set[int] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)  # "host:pid" of every live beacon
    depths: dict[str, int] | None = None  # None: unknown (then nothing is called lost)

    @classmethod
    def from_beacons(cls, beacons: dict[str, dict[str, Any]], depths: dict[str, Any] | None) -> InFlight:
        out = cls(depths={q: int(n) for q, n in (depths or {}).items() if isinstance(n, int)} if depths else None)
        for b in beacons.values():
            out.workers.add(f"{b.get('host')}:{b.get('pid')}")
            for job in b.get("jobs") or []:
                out.keys.add(str(job.get("key")))
                if job.get("round_id") is not None:
                    out.rounds.add(int(job["round_id"]))
                if job.get("evaluation_id") is not None:
                    out.evaluations.add(int(job["evaluation_id"]))
        return out


@dataclass
class Finding:
    owner: tuple[str, int]  # ("round", id) | ("evaluation", id)
    reason: str
    stale: list[str] = field(default_factory=list)  # rows of replaced attempts: superseded, no resume needed


def _age(ts: datetime | None, now: datetime) -> float:
    if ts is None:
        return float("inf")
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return (now - ts).total_seconds()


class _Current:
    """Is a job row of the current attempt (round jobs) or generation (collection jobs)? Cached per sweep."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._attempts: dict[tuple[int, str], tuple[str, int]] = {}
        self._generations: dict[str, int] = {}

    def __call__(self, key: str) -> bool:
        parts = key.split("/")
        if parts[0] == "round" and len(parts) == 4 and parts[3].startswith("a"):
            rid, step, attempt = int(parts[1]), parts[2], int(parts[3][1:])
            if (rid, step) not in self._attempts:
                rec = StepRecord.of((self.store.get_round(rid).steps or {}).get(step))
                self._attempts[(rid, step)] = (rec.state, rec.attempt)
            state, current = self._attempts[(rid, step)]
            return state == "running" and attempt == current
        if parts[0] == "collect" and "/g" in key:
            ckey, _, rest = key.partition("/g")
            if ckey not in self._generations:
                job = self.store.get_job(ckey)
                self._generations[ckey] = int(job.attempts) if job is not None else -1
            return rest.split("/", 1)[0] == str(self._generations[ckey])
        return True


def observe(broker_url: str) -> InFlight:
    """What the live workers run now (their beacons) and what waits in each queue."""
    from app.doctor import read_beacons
    from workers.tasks.rounds import queue_depths

    depths = queue_depths()
    return InFlight.from_beacons(read_beacons(broker_url), None if depths is None or "error" in depths else depths)


def inspect(store: Store, flight: InFlight, *, grace: float, now: datetime | None = None,
            only: tuple[str, int] | None = None) -> list[Finding]:
    """The running rounds and standalone evaluations (or ``only`` that one) that cannot move on by themselves,
    and why."""
    now = now or datetime.now(UTC)
    current = _Current(store)
    if only is not None:
        owners: list[tuple[str, int]] = [only]
    else:
        rounds, evaluations = store.running_owners()
        owners = [("round", r) for r in rounds] + [("evaluation", e) for e in evaluations]
    out: list[Finding] = []
    for kind, oid in owners:
        if oid in (flight.rounds if kind == "round" else flight.evaluations):
            continue  # a live worker runs one of its jobs (or its round_step) right now
        jobs = [j for j in (store.in_flight_jobs(round_id=oid) if kind == "round"
                            else store.in_flight_jobs(evaluation_id=oid))
                if j.kind != "collect"]  # the row of a whole collection is no job anybody runs
        if any(j.key in flight.keys for j in jobs):
            continue
        stale = [j.key for j in jobs if not current(j.key)]
        live = [j for j in jobs if current(j.key)]
        orphaned = [j for j in live if j.state == "running" and _age(j.started_at, now) > grace]
        lost = [j for j in live if j.state == "queued" and _age(j.queued_at, now) > grace
                and flight.depths is not None and flight.depths.get(j.queue, 1) == 0]
        reason = None
        if orphaned:
            j = orphaned[0]
            gone = j.worker and j.worker not in flight.workers
            reason = (f"job {j.key} is not running anywhere" + (f" (its worker {j.worker} is gone)" if gone else "")
                      + (f", and {len(orphaned) - 1} more" if len(orphaned) > 1 else ""))
        elif lost and len(lost) == len(live):
            reason = f"job {lost[0].key} is in no queue" + (f", and {len(lost) - 1} more" if len(lost) > 1 else "")
        elif not live and flight.depths is not None and flight.depths.get("control", 1) == 0:
            last = store.last_job_activity(round_id=oid) if kind == "round" else \
                store.last_job_activity(evaluation_id=oid)
            if _age(last, now) > grace:
                reason = "nothing is queued or running for it"
        if reason is not None or stale:
            out.append(Finding((kind, oid), reason or "", stale))
    return out


class Healer:
    """Sweeps every ``interval`` seconds; acts on what two sweeps in a row found."""

    def __init__(self, store: Store, broker_url: str, *, interval: float | None = None,
                 grace: float | None = None) -> None:
        from app.config import get_settings

        settings = get_settings()
        self.store, self.url = store, broker_url
        self.interval = interval if interval is not None else settings.healer_sweep_s
        self.grace = grace if grace is not None else max(settings.healer_grace_s, 3 * settings.heartbeat_s)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        self.suspects: dict[tuple[str, int], str] = {}
        self.heals: dict[tuple[str, int], list[float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one sweep ----------------------------------------------------------------------------------------
    def sweep(self, flight: InFlight | None = None) -> list[dict[str, Any]]:
        """Look once and act on what was also found last time. Returns what was done."""
        if flight is None:
            flight = observe(self.url)
        found = inspect(self.store, flight, grace=self.grace)
        done: list[dict[str, Any]] = []
        suspects: dict[tuple[str, int], str] = {}
        for f in found:
            for key in f.stale:
                self.store.supersede_job(key, "its attempt was replaced by a resume")
            if not f.reason:
                continue
            if f.owner in self.suspects:
                done.append(self._heal(f))
            else:
                suspects[f.owner] = f.reason
                log.info("%s %d looks stalled: %s (checking again in %.0f s)", *f.owner, f.reason, self.interval)
        self.suspects = suspects
        return done

    def _heal(self, f: Finding) -> dict[str, Any]:
        from app.store.rollouts import Owner
        from workers import collect
        from workers.tasks.rounds import resume_round

        kind, oid = f.owner
        now = time.monotonic()
        recent = [t for t in self.heals.get(f.owner, []) if now - t < 3600] + [now]
        self.heals[f.owner] = recent
        if len(recent) > MAX_HEALS:
            why = f"stalled {len(recent)} times within an hour (last: {f.reason}); not resumed automatically again"
            log.error("%s %d: %s", kind, oid, why)
            if kind == "round":
                self.store.set_round(oid, status="failed", error=f"healer: {why}", finished_at=datetime.now(UTC))
            else:
                self.store.set_evaluation_status(oid, "failed")
            return {"owner": f.owner, "action": "failed", "reason": why}
        log.warning("%s %d stalled: %s; resuming it", kind, oid, f.reason)
        if kind == "round":
            plan = resume_round(self.store, oid)
            if plan.get("resumed"):
                rec = StepRecord.of((self.store.get_round(oid).steps or {}).get(plan["resumed"]))
                self.store.update_round_step(oid, plan["resumed"], heals=rec.heals + 1, healed=f.reason)
            return {"owner": f.owner, "action": "resumed", "reason": f.reason, "plan": plan}
        collect.resume(self.store, Owner(evaluation_id=oid))
        return {"owner": f.owner, "action": "resumed", "reason": f.reason}

    # -- the thread -----------------------------------------------------------------------------------------
    def _lead(self) -> bool:
        """One healer acts: the one holding the broker's lock, which it renews every sweep (so that the two sweeps
        that must agree are its own); another takes over when the holder has been silent for three sweeps."""
        from app.doctor import _redis_client

        ttl = max(1, round(3 * self.interval))
        client = _redis_client(self.url, 5.0)
        try:
            if client.set(LOCK_KEY, self.token, nx=True, ex=ttl):
                return True
            held = client.get(LOCK_KEY)
            if held is not None and held.decode() == self.token:
                client.expire(LOCK_KEY, ttl)
                return True
            return False
        finally:
            client.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self._lead():
                    for action in self.sweep():
                        log.warning("healer: %s", action)
            except Exception as exc:  # noqa: BLE001 - the database or the broker may be down: next sweep
                log.warning("healer: this sweep failed (%s); trying again in %.0f s", exc, self.interval)

    def start(self) -> None:
        if self.url.startswith(("redis://", "rediss://", "unix://")) and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mucode-healer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

