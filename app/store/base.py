"""The store's core: engine, transactions and the portable bulk-write primitives every area uses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, Table, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.db.engine import make_engine

# Postgres caps bind parameters at 65535 per statement; SQLite's default is 32766.
_MAX_PARAMS = {"postgresql": 60000, "sqlite": 30000}


def chunked(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


class StoreBase:
    def __init__(self, url_or_engine: str | Engine, *, check: bool = True) -> None:
        if isinstance(url_or_engine, str):
            self.engine = make_engine(url_or_engine, check=check)
        else:
            self.engine = url_or_engine
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Any = None) -> StoreBase:
        from app.config import get_settings

        return cls((settings or get_settings()).database_url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error (nothing half written)."""
        with self.Session() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------------
    def upgrade(self, revision: str = "head") -> None:
        from app.db.migrate import upgrade

        upgrade(self.engine, revision)

    def is_migrated(self) -> bool:
        from app.db.migrate import current_revision, head_revision

        return current_revision(self.engine) == head_revision()

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    # -- bulk writes ------------------------------------------------------------------------------
    def _insert(self, table: Table):
        return (postgresql.insert if self.is_postgres else sqlite.insert)(table)

    def insert_ignore(
        self,
        s: Session,
        table: Table,
        rows: Sequence[dict[str, Any]],
        conflict: Iterable[str] | None = None,
        *,
        index_where: Any = None,
        returning: Sequence[Any] = (),
    ) -> list[Any]:
        """Multi-row ``INSERT ... ON CONFLICT DO NOTHING`` in parameter-bounded chunks.

        Returns the ``returning`` rows of the rows actually inserted (conflicting rows return nothing).
        """
        if not rows:
            return []
        ncols = max(len(r) for r in rows)
        size = max(1, _MAX_PARAMS.get(self.dialect, 30000) // max(ncols, 1))
        out: list[Any] = []
        for chunk in chunked(rows, size):
            stmt = self._insert(table).values(list(chunk))
            stmt = stmt.on_conflict_do_nothing(
                index_elements=list(conflict) if conflict else None, index_where=index_where
            )
            if returning:
                stmt = stmt.returning(*returning)
                out.extend(s.execute(stmt).all())
            else:
                s.execute(stmt)
        return out

    def upsert(
        self,
        s: Session,
        table: Table,
        rows: Sequence[dict[str, Any]],
        conflict: Iterable[str],
        update: Iterable[str],
        *,
        index_where: Any = None,
    ) -> None:
        """Multi-row ``INSERT ... ON CONFLICT DO UPDATE`` of the ``update`` columns."""
        if not rows:
            return
        ncols = max(len(r) for r in rows)
        size = max(1, _MAX_PARAMS.get(self.dialect, 30000) // max(ncols, 1))
        update = list(update)
        for chunk in chunked(rows, size):
            stmt = self._insert(table).values(list(chunk))
            stmt = stmt.on_conflict_do_update(
                index_elements=list(conflict),
                index_where=index_where,
                set_={c: getattr(stmt.excluded, c) for c in update},
            )
            s.execute(stmt)
