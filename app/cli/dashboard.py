"""CLI: mucode dashboard (issue 8)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    pass
