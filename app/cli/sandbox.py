"""CLI: mucode sandbox run (issue 3)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    pass
