"""Store queries: relabeling and SFT examples (issue 6)."""

from __future__ import annotations


class RelabelMixin:
    pass
