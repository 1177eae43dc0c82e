"""CLI: mucode db upgrade|current."""

from __future__ import annotations

import typer

from app.cli.common import console, get_store

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create or migrate the schema of MUCODE_DATABASE_URL."""
    from app.db.engine import redact

    store = get_store(migrated=False)
    store.upgrade(revision)
    console.print(f"database {redact(str(store.engine.url))} is at revision [bold]{revision}[/]")


@db_app.command("current")
def current() -> None:
    """Print the schema revision of the database and the code's head revision."""
    from app.db.migrate import current_revision, head_revision

    store = get_store(migrated=False)
    console.print(f"database: {current_revision(store.engine)}  code: {head_revision()}")


def register(root: typer.Typer) -> None:
    root.add_typer(db_app, name="db")
