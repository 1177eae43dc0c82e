"""Store queries: rollouts, turns and candidates; collection state (issue 4)."""

from __future__ import annotations


class RolloutsMixin:
    pass
