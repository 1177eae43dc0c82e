"""Store queries: verifier training sets, pairs and scores (issue 5)."""

from __future__ import annotations


class VerifierMixin:
    pass
