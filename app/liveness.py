"""The jobs this process is running right now, as a worker's beacon reports them (``mucode worker``).

A job row that says "running" is only a claim made when the job started: its worker may have been killed, or the
job may have died while the database was down and could not record it. The beacons of the live workers list what
they really run, so the healer (``workers/healer.py``) and ``round status`` can tell a running job from a lost one.
Entries are made by ``Store.job_started`` and removed when the job records its end (or its task returns).
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_running: dict[int, dict[str, dict[str, Any]]] = {}  # thread -> job key -> what the beacon says of it


def started(key: str, *, round_id: int | None = None, evaluation_id: int | None = None) -> None:
    with _lock:
        _running.setdefault(threading.get_ident(), {})[key] = {
            "key": key, "round_id": round_id, "evaluation_id": evaluation_id}


def finished(key: str | None = None) -> None:
    """Forget ``key`` (any thread's), or with no key everything this thread registered (its task returned)."""
    with _lock:
        if key is None:
            _running.pop(threading.get_ident(), None)
            return
        for jobs in _running.values():
            jobs.pop(key, None)


def snapshot() -> list[dict[str, Any]]:
    with _lock:
        return [dict(job) for jobs in _running.values() for job in jobs.values()]
