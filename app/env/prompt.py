"""The problem prompt: the paper's template, kept as data.

The wording is the reference code's ``generate_prompt`` (portal-cornell/muCode,
``src/env/benchmarks/commit0_utils.py``), character for character; it is the same for MBPP and HumanEval.
``{tests}`` is the problem's shown tests, one per line. The dataset loaders decide what is shown: for MBPP that
includes the setup code (as the reference did), while a HumanEval problem's setup code is hidden test code and
must never reach the prompt — so only ``shown_tests`` is rendered here.

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
    """The ``{tests}`` block: each shown test on its own line (never the hidden setup code)."""
    tests = _field(problem, "shown_tests") or []
    if isinstance(tests, str):
        tests = [tests]
    return "\n".join(t.strip("\n") for t in tests if t and t.strip())


def build_prompt(problem: Any) -> str:
    """The first user message for ``problem`` (anything with ``prompt`` and ``shown_tests``:
    a ``Problem`` row, a dataclass or a dict)."""
    text = _field(problem, "prompt")
    if text is None:
        raise ValueError("problem has no prompt text")
    return PROMPT_TEMPLATE.format(problem=text.strip("\n"), tests=shown_tests_text(problem))
