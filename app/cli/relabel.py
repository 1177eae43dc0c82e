"""CLI: mucode relabel, mucode generator train (issue 6)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    pass
