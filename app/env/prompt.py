"""The problem prompt: the paper's template, kept as data.

The wording is the reference code's ``generate_prompt`` (portal-cornell/muCode,
``src/env/benchmarks/commit0_utils.py``), character for character; it is the same for MBPP and HumanEval.
``{tests}`` is the problem's setup code (when there is any) followed by its shown tests, one per line.

One deliberate difference from the reference: it always wrote ``f"{setup}\\n{tests}"``, so an MBPP problem
without setup code (most of them) got a stray blank line before the asserts. Here empty parts are left out,
and leading/trailing newlines of the problem text and the tests are trimmed (HumanEval prompts end in one), so
every prompt has exactly one blank line between its sections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROMPT_TEMPLATE = (
    "Write a Python function implementation for the following prompt:\n\n"
    "{problem}\n\n"
    "Your code should satisfy these tests:\n\n"
    "{tests}\n\n"
    "Return only the implementation code, no tests or explanations. Be sure to include the relevant import "
    "statements:\n"
    "```python\n"
    "code\n"
    "```\n"
)


def _field(problem: Any, name: str, default: Any = None) -> Any:
    if isinstance(problem, Mapping):
        return problem.get(name, default)
    return getattr(problem, name, default)


def shown_tests_text(problem: Any) -> str:
    """The ``{tests}`` block: setup code (if any), then each shown test on its own line."""
    setup = (_field(problem, "setup_code") or "").strip("\n")
    tests = _field(problem, "shown_tests") or []
    if isinstance(tests, str):
        tests = [tests]
    parts = [setup] if setup.strip() else []
    parts.extend(t.strip("\n") for t in tests if t and t.strip())
    return "\n".join(parts)


def build_prompt(problem: Any) -> str:
    """The first user message for ``problem`` (anything with ``prompt``, ``shown_tests``, ``setup_code``:
    a ``Problem`` row, a dataclass or a dict)."""
    text = _field(problem, "prompt")
    if text is None:
        raise ValueError("problem has no prompt text")
    return PROMPT_TEMPLATE.format(problem=text.strip("\n"), tests=shown_tests_text(problem))
