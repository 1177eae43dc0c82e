"""Store queries: executions, the sandbox's cache.

An execution is keyed by (code hash, suite hash, suite kind, sandbox version) and shared by every candidate
whose code has that hash. The sandbox version carries the harness's tag (``app.harness``: ``+prelude`` when the
import prelude ran, ``+first`` when only the first public test was checked), so a verdict is only reused for
the same harness. ``candidates_for_execution`` reads what the execute task needs in one query,
``executions_by_key`` finds what is cached, ``record_executions`` writes new executions and copies the
verdicts onto the candidates (``public_passed``/``private_passed``) in one transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.db import models as m
from app.store.base import chunked

ExecutionKey = tuple[str, str, str, str]  # code_hash, suite_hash, suite_kind, sandbox_version
_IN_CHUNK = 5000


@dataclass(frozen=True)
class SuiteProblem:
    """What the sandbox needs of a problem (``problem_like``) plus its suite hashes."""

    id: int
    external_id: str
    entry_point: str | None
    code_prefix: str
    setup_code: str
    public_tests: list[str]
    private_tests: list[str]
    public_suite_hash: str
    private_suite_hash: str

    def suite_hash(self, kind: str) -> str:
        return self.public_suite_hash if kind == "public" else self.private_suite_hash


@dataclass(frozen=True)
class CandidateToExecute:
    id: int
    code: str
    code_hash: str
    problem: SuiteProblem


@dataclass(frozen=True)
class StoredVerdict:
    """A stored candidate with its labels and problem, for re-judging it (``stored_verdicts``)."""

    candidate_id: int
    code: str
    code_hash: str
    dataset: str
    split: str
    problem: SuiteProblem
    problem_meta: dict[str, Any]
    public_passed: bool
    private_passed: bool
    evaluation_id: int | None
    round_id: int | None


def _problem(row: Any) -> SuiteProblem:
    return SuiteProblem(
        id=row.problem_id,
        external_id=row.external_id,
        entry_point=row.entry_point,
        code_prefix=row.code_prefix or "",
        setup_code=row.setup_code or "",
        public_tests=list(row.public_tests or []),
        private_tests=list(row.private_tests or []),
        public_suite_hash=row.public_suite_hash,
        private_suite_hash=row.private_suite_hash,
    )


class ExecutionsMixin:
    def candidates_for_execution(self, candidate_ids: Iterable[int]) -> list[CandidateToExecute]:
        """The candidates with their code and their problem's suites, in one query per chunk of ids
        (candidates -> turns -> rollouts -> problems). Unknown ids are left out."""
        ids = sorted({int(i) for i in candidate_ids})
        out: list[CandidateToExecute] = []
        problems: dict[int, SuiteProblem] = {}
        with self.session() as s:
            for chunk in chunked(ids, _IN_CHUNK):
                q = (
                    select(
                        m.Candidate.id, m.Candidate.code, m.Candidate.code_hash,
                        m.Problem.id.label("problem_id"), m.Problem.external_id, m.Problem.entry_point,
                        m.Problem.code_prefix, m.Problem.setup_code, m.Problem.public_tests,
                        m.Problem.private_tests, m.Problem.public_suite_hash, m.Problem.private_suite_hash,
                    )
                    .join(m.Candidate.turn).join(m.Turn.rollout)
                    .join(m.Problem, m.Problem.id == m.Rollout.problem_id)
                    .where(m.Candidate.id.in_(list(chunk)))
                    .order_by(m.Candidate.id)
                )
                for row in s.execute(q):
                    problem = problems.get(row.problem_id)
                    if problem is None:
                        problem = problems[row.problem_id] = _problem(row)
                    out.append(CandidateToExecute(row.id, row.code or "", row.code_hash, problem))
        return out

    def executions_by_key(self, keys: Iterable[ExecutionKey], *, s: Session | None = None
                          ) -> dict[ExecutionKey, m.Execution]:
        """The stored executions among ``keys`` (detached ORM rows)."""
        keys = set(keys)
        if not keys:
            return {}
        by_version: dict[str, set[str]] = defaultdict(set)
        for code_hash, _, _, version in keys:
            by_version[version].add(code_hash)
        out: dict[ExecutionKey, m.Execution] = {}

        def run(sess: Session) -> None:
            for version, hashes in by_version.items():
                for chunk in chunked(sorted(hashes), _IN_CHUNK):
                    q = select(m.Execution).where(
                        m.Execution.sandbox_version == version, m.Execution.code_hash.in_(list(chunk))
                    )
                    for e in sess.execute(q).scalars():
                        key = (e.code_hash, e.suite_hash, e.suite_kind, e.sandbox_version)
                        if key in keys:
                            out[key] = e

        if s is not None:
            run(s)
        else:
            with self.session() as sess:
                run(sess)
                sess.expunge_all()
        return out

    def record_executions(self, rows: Sequence[dict[str, Any]],
                          verdicts: dict[int, tuple[bool, bool]] | None = None) -> dict[ExecutionKey, m.Execution]:
        """One transaction: insert the ``executions`` rows (an existing key is kept: the first verdict wins), set
        ``public_passed``/``private_passed`` of the candidates in ``verdicts`` ({candidate_id: (public,
        private)}), and return the stored executions of every key in ``rows``."""
        if any(r.get("status") == "sandbox_error" for r in rows):
            raise ValueError("a sandbox_error is an infrastructure failure and is never stored as a verdict")
        with self.session() as s:
            if rows:
                if hasattr(self, "add_executions"):
                    self.add_executions(rows, s=s)
                else:  # pragma: no cover - before the bulk helpers existed
                    self.insert_ignore(s, m.Execution.__table__, list(rows),
                                       ("code_hash", "suite_hash", "suite_kind", "sandbox_version"))
            groups: dict[tuple[bool, bool], list[int]] = defaultdict(list)
            for cid, pair in (verdicts or {}).items():
                groups[(bool(pair[0]), bool(pair[1]))].append(int(cid))
            for (pub, priv), ids in groups.items():
                for chunk in chunked(sorted(ids), _IN_CHUNK):
                    s.execute(
                        update(m.Candidate)
                        .where(m.Candidate.id.in_(list(chunk)))
                        .values(public_passed=pub, private_passed=priv)
                    )
            keys = {(r["code_hash"], r["suite_hash"], r["suite_kind"], r["sandbox_version"]) for r in rows}
            stored = self.executions_by_key(keys, s=s) if keys else {}
            s.flush()
            s.expunge_all()
        return stored

    def sandbox_problem(self, external_id: str) -> SuiteProblem | None:
        """A problem's suites by external id (``HumanEval/0``, ``mbpp/601``), for ``mucode sandbox run``."""
        q = select(
            m.Problem.id.label("problem_id"), m.Problem.external_id, m.Problem.entry_point, m.Problem.code_prefix,
            m.Problem.setup_code, m.Problem.public_tests, m.Problem.private_tests, m.Problem.public_suite_hash,
            m.Problem.private_suite_hash,
        ).where(m.Problem.external_id == external_id)
        with self.session() as s:
            row = s.execute(q).first()
            return _problem(row) if row is not None else None

    # -- re-judging stored candidates (bench/reference_agreement.py) --------------------------------------------
    def stored_verdicts(self, *, evaluation_ids: Sequence[int] = (), round_ids: Sequence[int] = (),
                        limit: int | None = None) -> list[StoredVerdict]:
        """The executed candidates of some collections (evaluations, standalone collections, or rounds'
        training rollouts), in id order, with their code, labels and problem."""
        if not evaluation_ids and not round_ids:
            return []
        owner = or_(m.Rollout.evaluation_id.in_([int(i) for i in evaluation_ids]),
                    m.Rollout.round_id.in_([int(i) for i in round_ids]))
        q = (
            select(
                m.Candidate.id, m.Candidate.code, m.Candidate.code_hash, m.Candidate.public_passed,
                m.Candidate.private_passed, m.Rollout.evaluation_id, m.Rollout.round_id,
                m.Dataset.name.label("dataset"), m.Problem.split, m.Problem.meta,
                m.Problem.id.label("problem_id"), m.Problem.external_id, m.Problem.entry_point,
                m.Problem.code_prefix, m.Problem.setup_code, m.Problem.public_tests, m.Problem.private_tests,
                m.Problem.public_suite_hash, m.Problem.private_suite_hash,
            )
            .join(m.Candidate.turn).join(m.Turn.rollout)
            .join(m.Problem, m.Problem.id == m.Rollout.problem_id)
            .join(m.Dataset, m.Dataset.id == m.Problem.dataset_id)
            .where(owner, m.Candidate.public_passed.is_not(None), m.Candidate.private_passed.is_not(None))
            .order_by(m.Candidate.id)
        )
        if limit is not None:
            q = q.limit(int(limit))
        problems: dict[int, SuiteProblem] = {}
        out: list[StoredVerdict] = []
        with self.session() as s:
            for row in s.execute(q):
                problem = problems.get(row.problem_id)
                if problem is None:
                    problem = problems[row.problem_id] = _problem(row)
                out.append(StoredVerdict(
                    candidate_id=row.id, code=row.code or "", code_hash=row.code_hash, dataset=row.dataset,
                    split=row.split, problem=problem, problem_meta=dict(row.meta or {}),
                    public_passed=bool(row.public_passed), private_passed=bool(row.private_passed),
                    evaluation_id=row.evaluation_id, round_id=row.round_id,
                ))  # fmt: skip
        return out
