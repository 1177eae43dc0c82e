"""The feedback text a model sees after a turn, from the execution of its code on the public tests.

The sandbox writes a sanitized message on every execution (exception type and message, the failing test, line
numbers relative to the model's code, no host paths). This module turns an execution verdict into the exact
text that follows ``"Feedback: "``: the paper's ``Code passed all tests`` on a pass, the paper's
``Code execution timed out`` on a timeout without a message, the sandbox's message otherwise, capped in length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PASSED_TEXT = "Code passed all tests"
TIMEOUT_TEXT = "Code execution timed out"
MAX_FEEDBACK_CHARS = 2000
TRUNCATION_MARK = "\n... (feedback truncated)"

# What the model is told when the sandbox left no message for a failing status.
DEFAULT_TEXT = {
    "timeout": TIMEOUT_TEXT,
    "memory": "Code execution ran out of memory (MemoryError)",
    "output_limit": "Code execution produced too much output",
    "failed": "Code did not pass the tests",
    "error": "Code did not pass the tests: the program stopped before all tests ran",
}
STATUSES = frozenset({"passed", *DEFAULT_TEXT, "sandbox_error"})


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def cap(text: str, limit: int = MAX_FEEDBACK_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, with a visible mark when it was cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATION_MARK))].rstrip() + TRUNCATION_MARK


def feedback_text(execution: Any, *, limit: int = MAX_FEEDBACK_CHARS) -> str:
    """The feedback for one public-suite execution (an ``Execution`` row, the sandbox's result or a dict with
    ``status`` and ``feedback``; ``passed`` is read when ``status`` is absent).

    A ``sandbox_error`` is an infrastructure failure, retried and never shown to the model: it raises.
    """
    status = _field(execution, "status")
    if status is None:
        passed = _field(execution, "passed")
        if passed is None:
            raise ValueError("execution has neither a status nor a passed flag")
        status = "passed" if passed else "failed"
    if status not in STATUSES:
        raise ValueError(f"unknown execution status {status!r}")
    if status == "sandbox_error":
        raise ValueError("a sandbox_error is retried, not fed back to the model")
    if status == "passed":
        return PASSED_TEXT
    message = (_field(execution, "feedback") or "").strip()
    return cap(message or DEFAULT_TEXT[status], limit)
