"""Store queries: executions, the sandbox cache (issue 3)."""

from __future__ import annotations


class ExecutionsMixin:
    pass
