"""CLI: mucode worker, mucode doctor (issue 9)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    pass
