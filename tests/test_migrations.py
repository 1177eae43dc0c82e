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


def _checks(engine) -> dict[str, set[str]]:
    insp = inspect(engine)
    return {t: {c["name"] for c in insp.get_check_constraints(t)} for t in Base.metadata.tables}


def _model_checks() -> dict[str, set[str]]:
    from sqlalchemy import CheckConstraint

    return {t.name: {c.name for c in t.constraints if isinstance(c, CheckConstraint)}
            for t in Base.metadata.tables.values()}


def test_the_migrations_create_the_models_check_constraints(pg_store, sqlite_store):
    # autogenerate does not compare CHECK constraints: compare their names on both databases
    want = _model_checks()
    assert want["jobs"] == {"ck_jobs_state"} and want["executions"] == {"ck_executions_status",
                                                                        "ck_executions_suite_kind"}
    assert _checks(pg_store.engine) == want
    assert _checks(sqlite_store.engine) == want


def test_a_status_outside_the_vocabulary_is_refused(pg_store, sqlite_store):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from app.db import models as m

    for store in (pg_store, sqlite_store):
        with store.session() as s:
            s.add(m.Job(key="k1", kind="sample", queue="gpu", state="queued"))
            s.commit()
        with store.session() as s, pytest.raises(IntegrityError, match=r"ck_jobs_state|CHECK constraint"):
            s.add(m.Job(key="k2", kind="sample", queue="gpu", state="finished"))
            s.commit()
