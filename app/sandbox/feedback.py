"""Feedback text for the model: what failed, in the model's own line numbers, with no host paths, capped.

Formats (docs/method.md §1): ``Code passed all tests`` on a pass; otherwise the failing test, then the
exception type and message (with the frames of the model's code, ``line N, in f``); a timeout starts with
``Code execution timed out``; memory and output limits are named plainly. ``compose_feedback`` writes a
program's whole feedback from its run as the judge saw it; the rest are the lines it and the judge's test
messages are made of.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import TYPE_CHECKING, Any

from app.sandbox.types import Limits
from app.sandbox.verdict import Run

if TYPE_CHECKING:
    from app.sandbox.remote import ProgramGone

PASSED = "Code passed all tests"
TIMED_OUT = "Code execution timed out"
MAX_CHARS = 2000
MAX_TEST_CHARS = 400
MAX_MESSAGE_CHARS = 300
_TRUNC = "\n... (feedback truncated)"


def _host_prefixes() -> list[tuple[str, str]]:
    pairs = []
    app_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for path, label in (
        (sys.prefix, "<python>"),
        (sys.base_prefix, "<python>"),
        (sys.exec_prefix, "<python>"),
        (os.path.realpath(sys.base_prefix), "<python>"),
        (app_root, "<app>"),
        (os.path.expanduser("~"), "<home>"),
    ):
        if path and len(path) > 1:
            pairs.append((path.rstrip("/"), label))
    # Longest first, so /a/b/.venv is replaced before /a/b.
    return sorted(set(pairs), key=lambda p: -len(p[0]))


_PREFIXES = _host_prefixes()
_FILE_RE = re.compile(r'File "(/[^"]*)"')


def sanitize(text: str) -> str:
    """Remove host paths: known install and checkout prefixes, and the file names of traceback lines."""
    if not text:
        return ""
    text = _FILE_RE.sub('File "<library>"', text)
    for prefix, label in _PREFIXES:
        if prefix in text:
            text = text.replace(prefix, label)
    return text


def cap(text: str, limit: int = MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(_TRUNC))].rstrip() + _TRUNC


def short(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def exception_line(info: dict[str, Any]) -> str:
    message = sanitize(str(info.get("message") or ""))
    name = str(info.get("type") or "Exception")
    return f"{name}: {short(message, MAX_MESSAGE_CHARS)}" if message else name


def summary(info: dict[str, Any]) -> str:
    """One line for a test's ``message``: the exception and the innermost line of the model's code."""
    line = exception_line(info)
    frames = info.get("frames") or []
    if info.get("syntax"):
        lineno = info["syntax"][0]
        return f"{line} (line {lineno})" if lineno else line
    if frames:
        return f"{line} (line {frames[-1][0]})"
    return line


def traceback_text(info: dict[str, Any]) -> str:
    """A traceback restricted to the model's code: ``line N, in f`` and the source line; then Type: message."""
    lines: list[str] = []
    syntax = info.get("syntax")
    if syntax:
        lineno, offset, text = syntax
        lines.append(f"  line {lineno}")
        if text:
            stripped = text.lstrip()
            lines.append(f"    {stripped}")
            if offset:
                col = max(0, offset - 1 - (len(text) - len(stripped)))
                lines.append("    " + " " * col + "^")
        lines.append(exception_line(info))
        return "\n".join(lines)
    frames = info.get("frames") or []
    if frames:
        lines.append("Traceback (most recent call last; line numbers are in your code):")
        omitted = int(info.get("omitted") or 0)
        half = len(frames) // 2 if omitted else len(frames)
        for i, (lineno, func, src) in enumerate(frames):
            if omitted and i == half:
                lines.append(f"  ... {omitted} more frames ...")
            where = "<module>" if func == "<module>" else func
            lines.append(f"  line {lineno}, in {where}")
            if src:
                lines.append(f"    {short(src, 200)}")
    lines.append(exception_line(info))
    return "\n".join(lines)


def failed_test_header(test: str) -> str:
    return "Failed test: " + short(sanitize(test), MAX_TEST_CHARS)


def exc_line(exc: BaseException) -> str:
    """``Type: message`` of an exception raised in the judge (its own, or a test's)."""
    name = type(exc).__name__
    msg = str(exc)
    return f"{name}: {msg}" if msg else name


def exit_text(info: dict[str, Any]) -> str:
    code = info.get("exit_code")
    if info["type"] == "SystemExit":
        return f"The program exited (SystemExit: {code!r}) instead of returning"
    return f"The program raised {info['type']} instead of returning"


def gone_text(gone: ProgramGone, limits: Limits) -> str:
    """A test's message when the program's process stopped answering during it."""
    if gone.reason == "timeout":
        return f"timed out (limit {limits.timeout_s:g} s)"
    if gone.reason == "died":
        return "the program's process ended before the test finished"
    if gone.reason == "memory":
        return "out of memory" + (f": {gone.detail}" if gone.detail else "")
    return gone.detail or "the program broke its connection to the tests"


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def compose_feedback(run: Run, status: str, limits: Limits, *, details: list[str] | None = None,
                     setup_detail: str = "") -> str:
    """The feedback for one program: ``details`` holds the judge's feedback block of each test that did not
    pass, ``setup_detail`` its account of a failed setup (both empty where no judge ran)."""
    if status == "passed":
        return PASSED
    tests = run.tests
    details = details if details is not None else [""] * len(tests)
    first = next((i for i, t in enumerate(tests) if t["outcome"] != "pass"), None)
    where = ""
    if run.fatal_test is not None and run.fatal_test < len(tests):
        where = "\n" + failed_test_header(tests[run.fatal_test]["test"])
    elif first is not None and run.load_error is None:
        where = "\n" + failed_test_header(tests[first]["test"])
    if status == "output_limit":
        text = (f"Code execution produced too much output: the limit is {limits.output_bytes // 1024} KiB "
                "for stdout, stderr and each file it writes" + where)
    elif status == "timeout":
        text = (f"Code execution timed out: the limit is {limits.timeout_s:g} s for loading and all tests"
                + where)
    else:
        parts = []
        le = run.load_error
        if status == "memory" and run.memory_detail:  # a cap on what the tests hold of its results
            parts.append(f"Code execution ran out of memory: {run.memory_detail}"
                         + (" (while it was being loaded, before any test ran)" if le is not None else where))
            return cap(sanitize("\n".join(parts)))
        if status == "memory":
            parts.append(f"Code execution ran out of memory (the limit is {limits.memory_mb} MB)")
        if le is not None and "gone" in le:
            if le["gone"] == "broken":
                parts.append("The program broke its connection to the tests while it was being loaded, "
                             "before any test ran" + (f": {le['detail']}" if le.get("detail") else ""))
            elif run.exit_signal is not None:
                parts.append(f"The program crashed while it was being loaded (killed by "
                             f"{signal_name(run.exit_signal)}), before any test ran")
            else:
                code = run.exit_code if run.exit_code is not None else 0
                parts.append(f"The program exited (status {code}) while it was being loaded, before any test "
                             "ran")
        elif le is not None:
            if le.get("syntax"):
                parts.append("Your code has a syntax error:\n" + traceback_text(le))
            elif le.get("exit"):
                parts.append(exit_text(le).replace("instead of returning",
                                                   "while it was being loaded, before any test ran"))
            else:
                parts.append("The program raised an exception while it was being loaded, before any test "
                             "ran:\n" + traceback_text(le))
        elif run.setup_error is not None:
            parts.append("The test setup failed: " + run.setup_error)
            if setup_detail and setup_detail != run.setup_error:
                parts.append(setup_detail)
        elif run.fatal in ("died", "broken") and run.fatal_test is not None:
            i = run.fatal_test
            parts.append(failed_test_header(tests[i]["test"]))
            if run.exit_signal is not None:
                parts.append(f"The program crashed (killed by {signal_name(run.exit_signal)})")
            elif run.fatal == "died":
                code = run.exit_code if run.exit_code is not None else 0
                parts.append(f"The program's process exited (status {code}) instead of returning")
            else:
                parts.append(tests[i]["message"])
        elif first is not None:
            parts.append(failed_test_header(tests[first]["test"]))
            detail = details[first] if first < len(details) else ""
            parts.append(detail or tests[first]["message"] or "AssertionError")
        elif not tests:
            parts.append("The test suite is empty")
        text = "\n".join(p for p in parts if p)
    return cap(sanitize(text))
