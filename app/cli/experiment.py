"""CLI: mucode experiment create, round run|status|resume, eval, demo (issue 7)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    pass
