"""Shared fixtures: a fresh database per test session on SQLite and on Postgres, created and dropped here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from app.db.engine import scratch_database

# Fixtures shared by many modules (the tiny models, the collection helpers), without importing them in each.
pytest_plugins = ("tests.helpers.models", "tests.helpers.collect")

PG_ADMIN_URL = os.environ.get("MUCODE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MUCODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _pg_admin():
    from app.db.engine import make_engine

    return make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new, empty Postgres database for this test session; dropped at the end."""
    try:
        _pg_admin().dispose()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL is required for the tests and is not reachable: {exc}")
    with scratch_database(PG_ADMIN_URL, "mucode_test") as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'mucode.db'}"


def _fresh_store(url: str):
    from app.store import Store

    store = Store(url)
    store.upgrade()
    return store


@contextmanager
def _pg_store() -> Iterator:
    with scratch_database(PG_ADMIN_URL, "mucode_test") as url:
        s = _fresh_store(url)
        try:
            yield s
        finally:
            s.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """A migrated, empty store on each backend (a new database per test)."""
    if request.param == "sqlite":
        s = _fresh_store(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.dispose()
        return
    with _pg_store() as s:
        yield s


@pytest.fixture
def pg_store():
    """A migrated, empty store on Postgres only."""
    with _pg_store() as s:
        yield s


@pytest.fixture
def sqlite_store(tmp_path):
    s = _fresh_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.dispose()
