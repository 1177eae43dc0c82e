"""Store queries: datasets and problems (loading, lookup, listing, counts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from app.db.models import Dataset, Problem
from app.errors import DataError, NotFound

# The columns a dataset file decides; compared on reload to tell "unchanged" from "changed".
CONTENT_COLUMNS = (
    "split",
    "prompt",
    "entry_point",
    "reference_solution",
    "code_prefix",
    "setup_code",
    "shown_tests",
    "public_tests",
    "private_tests",
    "public_suite_hash",
    "private_suite_hash",
    "suite_hash",
    "meta",
)


@dataclass
class ChangedProblem:
    external_id: str
    fields: list[str]
    old_suite_hash: str
    new_suite_hash: str


@dataclass
class LoadResult:
    """What ``load_problems`` found and did; ``applied`` is False when changes were found without force."""

    dataset: str
    source_path: str
    source_sha256: str
    total: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    changed: list[ChangedProblem] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the database, no longer in the file (kept)
    source_changed: bool = False
    applied: bool = True
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return not self.applied


class ProblemsMixin:
    def load_problems(
        self,
        dataset: str,
        *,
        source_path: str,
        source_sha256: str,
        rows: Sequence[dict[str, Any]],
        force: bool = False,
    ) -> LoadResult:
        """Write one dataset's problems in one transaction, idempotently.

        ``rows`` are ``problems`` columns keyed by name (``ProblemSpec.row()``). New problems are inserted;
        identical ones are left alone (a reload writes nothing at all). Problems whose content changed are
        listed in ``changed`` and, unless ``force``, nothing of the dataset is written (``applied=False``).
        """
        result = LoadResult(dataset, source_path, source_sha256, total=len(rows))
        for r in rows:
            result.splits[r["split"]] = result.splits.get(r["split"], 0) + 1
        with self.session() as s:
            ds = s.scalar(select(Dataset).where(Dataset.name == dataset))
            result.source_changed = ds is not None and ds.source_sha256 != source_sha256
            existing = self._problems_by_external_id(s, [r["external_id"] for r in rows])
            write: list[dict[str, Any]] = []
            for r in rows:
                old = existing.get(r["external_id"])
                if old is None:
                    result.inserted += 1
                    write.append(r)
                    continue
                if ds is None or old.dataset_id != ds.id:
                    raise DataError(f"problem {r['external_id']} already belongs to another dataset")
                fields = [c for c in CONTENT_COLUMNS if getattr(old, c) != r[c]]
                if fields:
                    result.changed.append(
                        ChangedProblem(r["external_id"], fields, old.suite_hash, r["suite_hash"])
                    )
                    write.append(r)
                else:
                    result.unchanged += 1
            if ds is not None:
                in_file = {r["external_id"] for r in rows}
                result.missing = list(
                    s.scalars(
                        select(Problem.external_id)
                        .where(Problem.dataset_id == ds.id)
                        .where(Problem.external_id.not_in(in_file))
                        .order_by(Problem.id)
                    )
                )
            if result.changed and not force:
                result.applied, result.inserted = False, 0
                return result
            result.updated = len(result.changed)
            if not write and not result.source_changed and ds is not None:
                return result  # same content: change nothing, not even loaded_at
            if ds is None:
                ds = Dataset(name=dataset, source_path=source_path, source_sha256=source_sha256)
                s.add(ds)
            ds.source_path, ds.source_sha256 = source_path, source_sha256
            ds.num_problems = len(rows) + len(result.missing)
            ds.loaded_at = func.now()
            s.flush()
            self.upsert(
                s,
                Problem.__table__,
                [{**r, "dataset_id": ds.id} for r in write],
                conflict=["external_id"],
                update=[*CONTENT_COLUMNS, "dataset_id"],
            )
        return result

    @staticmethod
    def _problems_by_external_id(s: Session, external_ids: list[str]) -> dict[str, Problem]:
        out: dict[str, Problem] = {}
        for i in range(0, len(external_ids), 1000):
            chunk = external_ids[i : i + 1000]
            out.update(
                {p.external_id: p for p in s.scalars(select(Problem).where(Problem.external_id.in_(chunk)))}
            )
        return out

    # -- lookups -----------------------------------------------------------------------------------
    def get_problem(self, ref: str | int, *, s: Session | None = None) -> Problem:
        """A problem by external id ("mbpp/601", "HumanEval/0") or by numeric id; NotFound otherwise."""
        with self._tx(s) as tx:
            by_id = isinstance(ref, int) or str(ref).isdigit()
            stmt = select(Problem).options(joinedload(Problem.dataset))  # callers show the dataset name
            problem = tx.scalar(stmt.where(Problem.id == int(ref) if by_id else Problem.external_id == ref))
            if problem is None:
                raise NotFound(f"no problem {ref!r}: see `mucode problems list` (is the dataset loaded?)")
            return problem

    def get_problems(self, ids: Sequence[int], *, s: Session | None = None) -> dict[int, Problem]:
        """Problems by numeric id (missing ids are absent from the result)."""
        with self._tx(s) as tx:
            out: dict[int, Problem] = {}
            for i in range(0, len(ids), 1000):
                out.update(
                    {p.id: p for p in tx.scalars(select(Problem).where(Problem.id.in_(ids[i : i + 1000])))}
                )
            return out

    def list_problems(
        self,
        dataset: str | None = None,
        split: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        s: Session | None = None,
    ) -> list[Problem]:
        """Problems in file order (their id), filtered by dataset name and split, with ``.dataset`` loaded."""
        stmt = select(Problem).options(joinedload(Problem.dataset))
        stmt = self._filtered(stmt, dataset, split).order_by(Problem.id).offset(offset)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._tx(s) as tx:
            return list(tx.scalars(stmt))

    def count_problems(
        self, dataset: str | None = None, split: str | None = None, *, s: Session | None = None
    ) -> int:
        with self._tx(s) as tx:
            return tx.scalar(self._filtered(select(func.count(Problem.id)), dataset, split)) or 0

    def split_counts(
        self, dataset: str | None = None, *, s: Session | None = None
    ) -> dict[str, dict[str, int]]:
        """{dataset name: {split: number of problems}}."""
        stmt = self._filtered(
            select(Dataset.name, Problem.split, func.count(Problem.id)).join_from(Problem, Dataset),
            dataset,
            None,
        ).group_by(Dataset.name, Problem.split)
        out: dict[str, dict[str, int]] = {}
        with self._tx(s) as tx:
            for name, split, n in tx.execute(stmt):
                out.setdefault(name, {})[split] = n
        return out

    def list_datasets(self, *, s: Session | None = None) -> list[Dataset]:
        with self._tx(s) as tx:
            return list(tx.scalars(select(Dataset).order_by(Dataset.id)))

    @staticmethod
    def _filtered(stmt, dataset: str | None, split: str | None):
        if dataset:
            stmt = stmt.where(
                Problem.dataset_id == select(Dataset.id).where(Dataset.name == dataset).scalar_subquery()
            )
        if split:
            stmt = stmt.where(Problem.split == split)
        return stmt
