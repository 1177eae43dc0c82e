"""Store queries: experiments, rounds, evaluations and their results (issue 7)."""

from __future__ import annotations


class ExperimentsMixin:
    pass
