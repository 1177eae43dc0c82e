"""Shared pieces of the collection tests: the tiny model fixture, a collection set-up, and the exact checks
a finished collection must pass (used by test_collect.py and test_collect_celery.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db import models as m
from app.store.rollouts import Owner

# The tiny model samples fastest on one thread; on a shared, busy machine two torch threads fight over the
# cores and a 32-token batch takes seconds instead of a tenth of one. Subprocesses get this environment.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def torch_single_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from app.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny"))


def load_mbpp(store) -> None:
    from app.datasets.registry import load_dataset

    load_dataset(store, "mbpp")


def make_collection(
    store,
    model_path: str,
    name: str,
    *,
    problems: int = 8,
    M: int = 2,
    T: int = 2,
    N: int = 1,
    selector: str = "first",
    verifier_id: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 0.7,
    seed: int = 0,
) -> Owner:
    """An evaluation row (mode collect) with its rollouts over the first ``problems`` MBPP train problems."""
    from workers.collect import CollectSpec, create_collection, dataset_problem_ids

    gen = store.ensure_model_version(model_path, "generator", model_path, model_path)
    spec = CollectSpec(
        turns=T, samples_per_problem=M, candidates=N, selector=selector, verifier_id=verifier_id,
        temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    ev = store.create_evaluation(
        name,
        generator_id=gen,
        dataset="mbpp",
        split="train",
        mode="collect",
        num_chains=M,
        max_turns=T,
        num_candidates=N,
        selector=selector,
        verifier_id=verifier_id,
        config=spec.model_dump(mode="json"),
    )
    owner = Owner(evaluation_id=ev)
    ids = dataset_problem_ids(store, "mbpp", "train", problems)
    create_collection(store, owner, ids, spec, generator_id=gen)
    return owner


def snapshot(store, owner: Owner) -> list[tuple[Any, ...]]:
    """Every candidate of the collection, keyed by database-independent names, for cross-run comparison."""
    with store.session() as s:
        rows = s.execute(
            select(
                m.Problem.external_id, m.Rollout.sample_index, m.Turn.index, m.Candidate.sample_index,
                m.Candidate.response, m.Candidate.public_passed,
                m.Candidate.private_passed,
                m.Candidate.chosen,
                m.Turn.feedback,
            )
            .join(m.Turn, m.Turn.id == m.Candidate.turn_id)
            .join(m.Rollout, m.Rollout.id == m.Turn.rollout_id)
            .join(m.Problem, m.Problem.id == m.Rollout.problem_id)
            .where(owner.rollout_where())
        ).all()
    return sorted(tuple(r) for r in rows)


def assert_collection_exact(
    store, owner: Owner, *, P: int, M: int, T: int, N: int = 1, stop_rule: str = "public"
) -> dict[str, Any]:
    """Every invariant of a finished collection; returns the counts."""
    from app.env import append_turn, feedback_text, initial_messages

    where = owner.rollout_where()
    with store.session() as s:
        rollouts = s.execute(select(m.Rollout).where(where)).scalars().all()
        assert len(rollouts) == P * M, f"{len(rollouts)} rollouts, expected {P} x {M}"
        assert len({(r.problem_id, r.sample_index) for r in rollouts}) == P * M
        assert Counter(r.sample_index for r in rollouts) == dict.fromkeys(range(M), P)
        assert all(r.status == "done" for r in rollouts), Counter(r.status for r in rollouts)
        problems = {
            p.id: p
            for p in s.execute(
                select(m.Problem).where(m.Problem.id.in_({r.problem_id for r in rollouts}))
            ).scalars()
        }
        assert len(problems) == P
        rids = [r.id for r in rollouts]
        turns = (
            s.execute(
                select(m.Turn).where(m.Turn.rollout_id.in_(rids)).order_by(m.Turn.rollout_id, m.Turn.index)
            )
            .scalars()
            .all()
        )
        cands = (
            s.execute(select(m.Candidate).where(m.Candidate.turn_id.in_([t.id for t in turns])))
            .scalars()
            .all()
        )
        by_turn: dict[int, list[m.Candidate]] = {}
        for c in cands:
            by_turn.setdefault(c.turn_id, []).append(c)
        turns_of: dict[int, list[m.Turn]] = {}
        for t in turns:
            turns_of.setdefault(t.rollout_id, []).append(t)
        execs = s.execute(
            select(
                m.Execution.code_hash,
                m.Execution.suite_hash,
                m.Execution.suite_kind,
                m.Execution.status,
                m.Execution.feedback,
            )
        ).all()
        n_exec_rows = s.execute(select(func.count()).select_from(m.Execution)).scalar_one()
    exec_by_key = {(e.code_hash, e.suite_hash, e.suite_kind): e for e in execs}
    assert len(exec_by_key) == n_exec_rows, "duplicate executions for one (code, suite)"
    assert all(e.status != "sandbox_error" for e in execs)
    needed = set()
    for r in rollouts:
        ts = turns_of.get(r.id, [])
        assert [t.index for t in ts] == list(range(1, r.num_turns + 1)), (r.id, [t.index for t in ts])
        assert 1 <= r.num_turns <= T
        problem = problems[r.problem_id]
        expected_messages = initial_messages(problem)
        for t in ts:
            assert t.messages == expected_messages, f"rollout {r.id} turn {t.index}: messages differ"
            cs = sorted(by_turn.get(t.id, []), key=lambda c: c.sample_index)
            assert [c.sample_index for c in cs] == list(range(N)), (t.id, [c.sample_index for c in cs])
            assert all(c.public_passed is not None and c.private_passed is not None for c in cs)
            chosen = [c for c in cs if c.chosen]
            assert len(chosen) == 1, f"turn {t.id}: {len(chosen)} chosen candidates"
            c = chosen[0]
            for cc in cs:
                needed.add((cc.code_hash, problem.public_suite_hash, "public"))
                needed.add((cc.code_hash, problem.private_suite_hash, "private"))
            ex = exec_by_key[(c.code_hash, problem.public_suite_hash, "public")]
            assert t.feedback == feedback_text({"status": ex.status, "feedback": ex.feedback})
            last = t.index == r.num_turns
            if not last:  # a trajectory continues only after a failed turn
                assert not c.public_passed or (stop_rule == "public_and_private" and not c.private_passed)
            else:
                assert t.index == T or c.public_passed
                assert r.final_label is c.private_passed and r.public_passed is c.public_passed
            expected_messages = append_turn(t.messages, c.response, t.feedback)
    assert needed <= set(exec_by_key), "a candidate's code lacks an execution"
    counts = store.collection_counts(owner)
    assert counts["candidates"] == counts["executed"] == len(cands) == sum(r.num_turns for r in rollouts) * N
    assert counts["turns"] == len(turns)
    return counts
