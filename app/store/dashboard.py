"""Store queries: read-only aggregates for the dashboard (issue 8)."""

from __future__ import annotations


class DashboardMixin:
    pass
