"""Code extraction from a model response (docs/method.md §1, "Code extraction"; bug B2).

Rules, in order:
1. The first fenced block whose info string is ``python``, ``py``, ``python3``, ``py3`` (any case) or empty
   (a bare fence) gives the code: the text between the opening line and the next `````. Blocks of other
   languages (```` ```bash ````, ```` ```text ````...) are skipped whole, so their closing fence is never taken
   for a bare opening fence.
2. An opening fence that is never closed takes the rest of the text (the reference code returned an empty
   string here, bug B2: a response cut at the token limit lost its code).
3. No such fence: the whole text is the code.

Line endings are normalised to ``\\n``; the code is dedented (a block indented under a list item still runs)
and stripped of surrounding blank lines and trailing whitespace. A stray closing fence at the very end of an
unfenced answer (``code\\n```\\n``) is dropped rather than read as an empty unterminated block.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Literal

PYTHON_TAGS = frozenset({"", "python", "py", "python3", "py3"})
FENCE = "```"

Rule = Literal["fenced", "unterminated", "no_fence"]


@dataclass(frozen=True)
class Extraction:
    code: str
    rule: Rule  # which rule produced the code
    language: str | None = None  # the fence's info string (None without a fence)


def _clean(code: str) -> str:
    code = textwrap.dedent(code)
    lines = code.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines).rstrip()


def extract(text: str) -> Extraction:
    """The code of ``text`` and the rule that found it."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pos = 0
    while True:
        start = text.find(FENCE, pos)
        if start < 0:
            break
        eol = text.find("\n", start + len(FENCE))
        info_line = text[start + len(FENCE) : eol if eol >= 0 else len(text)]
        info_line = info_line.lstrip("`").strip()
        tag = info_line.split()[0].lower() if info_line else ""
        body_start = eol + 1 if eol >= 0 else len(text)
        end = text.find(FENCE, body_start)
        if tag in PYTHON_TAGS:
            if end >= 0:
                return Extraction(_clean(text[body_start:end]), "fenced", tag)
            body = text[body_start:]
            if not body.strip() and not tag:
                # A lone bare fence at the end: a closing fence without an opening one, not a code block.
                return Extraction(_clean(text[:start]), "no_fence")
            return Extraction(_clean(body), "unterminated", tag)
        if end < 0:
            break  # an unterminated block of another language: nothing after it is fenced Python
        pos = end + len(FENCE)
    return Extraction(_clean(text), "no_fence")


def code_block_closed(text: str) -> bool:
    """True once ``text`` holds a whole first Python code block (rule 1): what follows cannot change the code."""
    return extract(text).rule == "fenced"


def extract_code(text: str) -> str:
    """The program to execute for a model response (see the module's rules)."""
    return extract(text).code
