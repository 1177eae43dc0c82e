"""Helpers shared by the CLI modules: the store from settings, consoles, JSON output."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def get_store(migrated: bool = True):
    """The store of the configured database; with ``migrated`` it must be at the head revision."""
    from app.errors import MucodeError
    from app.store import Store

    store = Store.from_settings()
    if migrated and not store.is_migrated():
        raise MucodeError("the database is not migrated to the current schema: run `mucode db upgrade`")
    return store


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))
