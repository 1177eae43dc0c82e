"""CLI: mucode models pull|list, mucode collect/resume (issue 4)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    pass
