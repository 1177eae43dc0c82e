"""The import prelude: the 16 import lines the reference harness puts before every program it runs.

µCode's reference code writes one file per test group: these lines, the program, the setup and the asserts, run
with ``python3``. A program that calls ``math.sqrt`` or ``Counter(...)`` without importing them therefore passes
there, and the paper's labels, verifier pairs and accuracies all count it as correct. With the prelude on
(``harness.import_prelude``, the default), mucode runs the same lines as trusted code before the problem's own
prefix: in the program's process before its code, and in the judge before the tests, so both see the names, as
in the reference's single script. The prelude is compiled apart from the program, so line numbers in feedback
stay those of the model's code.

NumPy. Importing NumPy is most of a program's start-up cost, and the sandbox forks a program that names NumPy
from a zygote that has already imported it (a bigger fork). The prelude's two NumPy lines are therefore only
included when the program or the suite names ``numpy`` or ``np``; without that name nothing can observe the
module (short of looking it up by a computed string), so every verdict is the same as with all 16 lines
(``bench/reference_agreement.py`` re-judges stored candidates with the reference's whole prelude to check it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# The reference's lines, in its order (src/env/benchmarks/*_wrapper.py).
PRELUDE_LINES: tuple[str, ...] = (
    "import math",
    "import re",
    "import copy",
    "import datetime",
    "import itertools",
    "import collections",
    "import heapq",
    "import functools",
    "import hashlib",
    "import numpy",
    "import numpy as np",
    "import string",
    "import os",
    "import sys",
    "from typing import *",
    "from collections import *",
)
PRELUDE = "\n".join(PRELUDE_LINES) + "\n"
NUMPY_LINES = frozenset({"import numpy", "import numpy as np"})
PRELUDE_WITHOUT_NUMPY = "\n".join(line for line in PRELUDE_LINES if line not in NUMPY_LINES) + "\n"
_NAMES_NUMPY = re.compile(r"\b(?:numpy|np)\b")


def names_numpy(*sources: str | Iterable[str] | None) -> bool:
    """Whether any of the texts (a string or a list of strings) mentions ``numpy`` or ``np`` as a word."""
    for src in sources:
        if not src:
            continue
        for text in [src] if isinstance(src, str) else src:
            if text and _NAMES_NUMPY.search(str(text)):
                return True
    return False


def prelude_for(code: str, *suite_sources: str | Iterable[str] | None) -> str:
    """The prelude to run before ``code`` with a suite made of ``suite_sources`` (prefix, setup, tests): all 16
    lines when any of them names NumPy, else the 14 others (the same verdicts; see the module docstring)."""
    return PRELUDE if names_numpy(code, *suite_sources) else PRELUDE_WITHOUT_NUMPY
