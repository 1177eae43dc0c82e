"""CLI: mucode verifier train|score|metrics (issue 5)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    pass
