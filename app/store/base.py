"""The store's core: engine, transactions and the portable bulk-write primitives every area uses."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Engine, Table, inspect, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.db.engine import make_engine

# One encoder for COPY's JSON columns: json.dumps with options builds a new one per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

# Postgres caps bind parameters at 65535 per statement; SQLite's default is 32766.
_MAX_PARAMS = {"postgresql": 60000, "sqlite": 30000}


def chunked(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def id_or_name(id_column: Any, name_column: Any, ref: int | str) -> Any:
    """The WHERE clause of a lookup by id or by name: a number (or a string of digits) matches either column,
    anything else the name only. Callers order by id, so an id wins over a name made of the same digits."""
    from sqlalchemy import or_

    if isinstance(ref, int) or str(ref).isdigit():
        return or_(id_column == int(ref), name_column == str(ref))
    return name_column == str(ref)


def training_set_dict(ts: Any, **extra: Any) -> dict[str, Any]:
    """A ``TrainingSet`` row as the store returns one (with ``extra`` keys: counts, whether it was created)."""
    return {"id": ts.id, "name": ts.name, "kind": ts.kind, "experiment_id": ts.experiment_id,
            "round_id": ts.round_id, "config": dict(ts.config or {}), "stats": dict(ts.stats or {}), **extra}


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

    @contextmanager
    def _tx(self, s: Session | None = None) -> Iterator[Session]:
        """The caller's transaction when one is given, else a new one (for methods taking ``s=None``)."""
        if s is not None:
            yield s
        else:
            with self.session() as new:
                yield new

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

    def copy_insert_ignore(
        self,
        s: Session,
        table: Table,
        rows: Sequence[dict[str, Any]],
        conflict: Sequence[str],
        *,
        conflict_where: str | None = None,
        return_ids: bool = False,
    ) -> dict[tuple[Any, ...], int]:
        """Bulk ``INSERT ... ON CONFLICT (conflict) DO NOTHING`` of dict rows keyed by column name.

        Postgres: COPY into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``.
        SQLite: multi-row ``INSERT ... ON CONFLICT DO NOTHING``. A column a row leaves out takes the model's
        Python default (else NULL, or the server default when no row names it); an unknown key is an error.
        Duplicate keys within ``rows`` are fine (the first wins). ``conflict_where`` (SQL text) names a
        partial unique index. With ``return_ids``: ``{conflict key tuple: id}`` for every row given, whether
        inserted now or already there; otherwise ``{}``.
        """
        if not rows:
            return {}
        cols, values = _column_values(table, rows)
        if self.is_postgres:
            return _pg_copy_insert(s, table, cols, values, conflict, conflict_where, return_ids)
        self.insert_ignore(
            s, table, [dict(zip(cols, v)) for v in values], conflict,
            index_where=text(conflict_where) if conflict_where else None,
        )
        if not return_ids:
            return {}
        key_cols = [table.c[k] for k in conflict]
        idx = [cols.index(k) for k in conflict]
        keys = list(dict.fromkeys(tuple(v[i] for i in idx) for v in values))
        out: dict[tuple[Any, ...], int] = {}
        for chunk in chunked(keys, max(1, _MAX_PARAMS["sqlite"] // len(key_cols))):
            stmt = select(table.c.id, *key_cols).where(tuple_(*key_cols).in_(list(chunk)))
            out.update({tuple(r[1:]): r[0] for r in s.execute(stmt)})
        return out


def _column_values(table: Table, rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The columns to write (every key used, plus columns with a Python default) and one tuple per row."""
    used: set[str] = set().union(*rows)
    unknown = used - set(table.c.keys())
    if unknown:
        raise ValueError(f"{table.name}: unknown column(s) {', '.join(sorted(unknown))}")
    # Python-side defaults (callables such as dict are called per row, so rows never share one value).
    defaults = {
        c.name: c.default for c in table.c
        if getattr(c.default, "is_scalar", False) or getattr(c.default, "is_callable", False)
    }
    cols = [c.name for c in table.c if c.name in used or c.name in defaults]

    def fill(c: str) -> Any:
        d = defaults.get(c)
        return None if d is None else d.arg(None) if d.is_callable else d.arg

    # itemgetter is the fast path for complete rows (the usual case); a row with gaps takes the slow one.
    get = itemgetter(*cols) if len(cols) > 1 else (lambda r: (r[cols[0]],))
    values = []
    for r in rows:
        try:
            values.append(get(r))
        except KeyError:
            values.append(tuple(r[c] if c in r else fill(c) for c in cols))
    return cols, values


def _pg_copy_insert(
    s: Session,
    table: Table,
    cols: list[str],
    values: list[tuple[Any, ...]],
    conflict: Sequence[str],
    conflict_where: str | None,
    return_ids: bool,
) -> dict[tuple[Any, ...], int]:
    json_ix = [i for i, c in enumerate(cols) if isinstance(table.c[c].type, JSON)]
    dumps = _JSON.encode
    tmp = f"_copy_{table.name}_{uuid.uuid4().hex[:8]}"
    col_sql = ", ".join(f'"{c}"' for c in cols)
    key_sql = ", ".join(f'"{c}"' for c in conflict)
    where = f" WHERE {conflict_where}" if conflict_where else ""
    raw = s.connection().connection.driver_connection  # the session's psycopg connection and transaction
    out: dict[tuple[Any, ...], int] = {}
    with raw.cursor() as cur:
        # A bare copy of the columns: no defaults (no sequence calls), no constraints, no WAL.
        cur.execute(
            f'CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {col_sql} FROM "{table.name}" WITH NO DATA'
        )
        with cur.copy(f"COPY {tmp} ({col_sql}) FROM STDIN") as copy:
            for v in values:
                if json_ix:
                    v = list(v)
                    for i in json_ix:
                        if v[i] is not None:
                            v[i] = dumps(v[i])
                copy.write_row(v)
        insert = (
            f'INSERT INTO "{table.name}" ({col_sql}) SELECT {col_sql} FROM {tmp} '
            f"ON CONFLICT ({key_sql}){where} DO NOTHING"
        )
        if return_ids:
            # RETURNING gives the ids of the new rows; only when some rows already existed (a redelivery)
            # does it take a join to find theirs.
            cur.execute(f"{insert} RETURNING id, {key_sql}")
            out = {r[1:]: r[0] for r in cur.fetchall()}
            key_of = itemgetter(*(cols.index(c) for c in conflict))
            if len(out) < len({key_of(v) for v in values}):
                t_keys = ", ".join(f't."{c}"' for c in conflict)
                cur.execute(f'SELECT t.id, {t_keys} FROM "{table.name}" t JOIN {tmp} USING ({key_sql})')
                out.update({r[1:]: r[0] for r in cur.fetchall()})
        else:
            cur.execute(insert)
        cur.execute(f"DROP TABLE {tmp}")
    return out
