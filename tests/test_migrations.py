"""The models and the migrations agree: after ``upgrade head`` Alembic's autogenerate finds no difference."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.db.migrate import current_revision, head_revision, upgrade
from app.db.models import Base


def _diff(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(ctx, Base.metadata)


def test_postgres_schema_matches_models(pg_store):
    assert current_revision(pg_store.engine) == head_revision()
    assert _diff(pg_store.engine) == []


def test_downgrade_to_base_and_back(pg_store):
    from alembic import command

    from app.db.migrate import alembic_config

    command.downgrade(alembic_config(pg_store.engine), "base")
    assert set(inspect(pg_store.engine).get_table_names()) <= {"alembic_version"}
    upgrade(pg_store.engine)
    assert _diff(pg_store.engine) == []


def test_sqlite_has_every_table_and_is_at_head(sqlite_store):
    assert sqlite_store.is_migrated()
    assert set(Base.metadata.tables) <= set(sqlite_store.table_names())
