"""CLI: mucode problems list|show (issue 2)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    pass
