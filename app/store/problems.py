"""Store queries: problems and datasets (issue 2)."""

from __future__ import annotations


class ProblemsMixin:
    pass
