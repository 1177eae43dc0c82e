"""Submit a task by name: to the broker when one is configured, otherwise run it in-process.

In-process jobs go through a FIFO drained by the outermost ``submit`` call, so a task that enqueues its
successor (sample -> execute -> sample ...) runs as a loop, not as ever-deeper recursion.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from app.config import get_settings
from app.errors import TransientError

_local = threading.local()

# Sending rides out a short broker outage (a restart) by itself; past this, the caller handles it: a job waits and
# runs again (workers/healing.py), a command reports the error.
SEND_RETRY_POLICY = {"max_retries": 6, "interval_start": 0.5, "interval_step": 2.0, "interval_max": 5.0}


class BrokerUnavailable(TransientError):
    """The broker cannot be reached (a job that meets this waits and runs again)."""


def _queue() -> deque:
    if not hasattr(_local, "queue"):
        _local.queue = deque()
        _local.draining = False
    return _local.queue


def in_process() -> bool:
    return get_settings().broker_url is None


def submit(name: str, **kwargs: Any) -> None:
    from workers.celery_app import TASK_QUEUES, celery_app

    if name not in TASK_QUEUES:
        raise ValueError(f"unknown task {name!r}")
    if not in_process():
        try:
            celery_app.send_task(name, kwargs=kwargs, queue=TASK_QUEUES[name], retry=True,
                                 retry_policy=SEND_RETRY_POLICY)
        except Exception as exc:  # kombu raises OperationalError subclasses for an unreachable broker
            raise BrokerUnavailable(
                f"cannot reach the broker at {get_settings().broker_url}: {exc}"
            ) from exc
        return
    # In-process, nothing has imported the task modules yet (a worker does it at start-up).
    celery_app.loader.import_default_modules()
    q = _queue()
    q.append((name, kwargs))
    if _local.draining:
        return
    _local.draining = True
    try:
        while q:
            task_name, task_kwargs = q.popleft()
            celery_app.tasks[task_name].run(**task_kwargs)
    finally:
        _local.draining = False
        q.clear()


def check_broker(timeout: float = 5.0) -> None:
    """Raise BrokerUnavailable with a clear message when the configured broker cannot be reached."""
    if in_process():
        return
    from workers.celery_app import celery_app

    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        raise BrokerUnavailable(f"cannot reach the broker at {get_settings().broker_url}: {exc}") from exc
