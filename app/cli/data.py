"""CLI: mucode data load (issue 2)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    pass
