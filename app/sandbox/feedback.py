"""Feedback text for the model: what failed, in the model's own line numbers, with no host paths, capped.

Formats (docs/method.md §1): ``Code passed all tests`` on a pass; otherwise the failing test, then the
exception type and message (with the frames of the model's code, ``line N, in f``); a timeout starts with
``Code execution timed out``; memory and output limits are named plainly.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

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
