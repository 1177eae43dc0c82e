"""Store queries: jobs (issues 4, 7)."""

from __future__ import annotations


class JobsMixin:
    pass
