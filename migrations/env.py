"""Alembic environment: the engine comes from the caller (app.db.migrate) or from MUCODE_DATABASE_URL."""

from __future__ import annotations

from alembic import context

from app.db.models import Base

target_metadata = Base.metadata


def run_migrations() -> None:
    engine = context.config.attributes.get("engine")
    if engine is None:
        from app.config import get_settings
        from app.db.engine import make_engine

        engine = make_engine(get_settings().database_url)
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        context.run_migrations()


run_migrations()
