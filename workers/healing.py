"""Jobs ride out outages of the database and the broker instead of failing.

A job body that meets such an error (``app.errors.is_transient``) records nothing: the error says nothing about the
job, and the record could not be written anyway while the database is down. It waits, with exponential backoff,
and runs again from the start. Every job is idempotent (work is decided from the data rows, writes are
insert-or-ignore), so running again finishes exactly what the first try left. Its message stays unacknowledged
meanwhile (``acks_late``): if the worker dies while waiting, the broker hands the job to another worker. Past
``Settings.outage_wait_s`` the error is raised as a failure. What slips through anyway (a job lost with a killed
worker, a message lost with a broker's data) is found and queued again by the healer (``workers/healer.py``).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from app.errors import first_line, is_transient

log = logging.getLogger("mucode.healing")
F = TypeVar("F", bound=Callable[..., Any])
FIRST_WAIT_S = 1.0
MAX_WAIT_S = 60.0


def worker_name() -> str:
    """How a job row names the process that runs it (a worker's beacon names itself the same way)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def describe(exc: BaseException) -> str:
    line = first_line(exc)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def ride_out_outages(fn: F) -> F:
    """Run ``fn`` again, after a growing pause, while it fails because a service is unreachable."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from app.config import get_settings

        budget = get_settings().outage_wait_s
        t0 = time.monotonic()
        wait = FIRST_WAIT_S
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                waited = time.monotonic() - t0
                if not is_transient(exc) or waited + wait > budget:
                    raise
                log.warning("%s: %s; running it again in %.0f s (waited %.0f s so far)", fn.__name__,
                            describe(exc), wait, waited)
                time.sleep(wait * random.uniform(0.8, 1.2))
                wait = min(wait * 2, MAX_WAIT_S)

    return run  # type: ignore[return-value]
