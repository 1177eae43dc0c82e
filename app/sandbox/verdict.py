"""Deciding a verdict in the judge, the trusted side: per-test outcomes and the execution's status.

The values a candidate returns reach the judge as plain data of exact builtin types (``app.sandbox.wire``), so
``assert f(x) == expected`` is compared here by the builtin types' own ``==``; an object that is not plain stays
in the candidate's process as a :class:`ProgramObject`, which compares equal to nothing but itself and has no
truth value. A test passes only when the judge runs its statement to the end without an exception: nothing the
candidate prints, exits with or patches can produce that.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from app.sandbox.types import Limits


@dataclass
class Run:
    """What happened while judging one program, before it is turned into a status."""

    tests: list[dict[str, Any]] = field(default_factory=list)
    load_error: dict[str, Any] | None = None  # the candidate's exception while loading
    setup_error: str | None = None
    fatal: str | None = None  # "timeout" | "died" | "broken" | "memory" once the program cannot go on
    fatal_test: int | None = None
    memory: bool = False  # a MemoryError was raised by the program
    memory_detail: str | None = None  # set when a cap on what the judge holds of its results stopped it
    exit_signal: int | None = None  # the candidate process was killed by this signal (not by the judge)
    exit_code: int | None = None
    output_bytes: int = 0
    timed_out: bool = False
    tests_started: bool = False  # the program's process answered (it was isolated and running)


def status_of(run: Run, limits: Limits) -> str:
    if run.tests and all(t["outcome"] == "pass" for t in run.tests) and run.load_error is None \
            and run.setup_error is None and run.fatal is None:
        return "passed"
    if run.exit_signal == signal.SIGXFSZ or run.output_bytes >= limits.output_bytes:
        return "output_limit"
    if run.timed_out or run.fatal == "timeout" or run.exit_signal == signal.SIGXCPU:
        return "timeout"
    if run.memory or run.fatal == "memory":
        return "memory"
    if run.load_error is not None or run.fatal is not None or run.setup_error is not None:
        return "error"
    if any(t["outcome"] == "error" for t in run.tests):
        return "error"
    if not run.tests:
        return "error"  # an empty suite proves nothing
    return "failed"
