"""The store's foundation on SQLite and Postgres: problem lookups and the bulk idempotent writes."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.datasets.base import ProblemSpec
from app.db import models as m
from app.errors import DataError, NotFound


def _spec(external_id: str, split: str = "train", test: str = "assert f(1) == 2") -> dict:
    return ProblemSpec(
        external_id=external_id,
        split=split,
        prompt=f"Write f ({external_id}).",
        entry_point="f",
        reference_solution="def f(x):\n    return x + 1\n",
        shown_tests=[test],
        public_tests=[test],
        private_tests=[test, "assert f(2) == 3"],
    ).row()


def _load(store, name: str, rows: list[dict], **kw):
    return store.load_problems(name, source_path=f"/data/{name}", source_sha256="0" * 64, rows=rows, **kw)


@pytest.fixture
def owner(store):
    """A problem, a round and three rollouts with two turns each; returns (problem id, round id, turn ids)."""
    _load(store, "toy", [_spec("toy/1")])
    problem_id = store.get_problem("toy/1").id
    with store.session() as s:
        exp = m.Experiment(name="e", method="mucode", base_model="tiny", config={})
        s.add(exp)
        s.flush()
        rnd = m.Round(experiment_id=exp.id, index=0)
        s.add(rnd)
        s.flush()
        round_id = rnd.id
    rollouts = store.add_rollouts(
        [{"round_id": round_id, "problem_id": problem_id, "sample_index": i, "seed": i} for i in range(3)]
    )
    turns = store.add_turns(
        [
            {"rollout_id": rid, "index": t, "messages": [{"role": "user", "content": "x"}]}
            for rid in rollouts.values()
            for t in (1, 2)
        ]
    )
    return problem_id, round_id, sorted(turns.values())


def _candidate(turn_id: int, j: int, response: str = "def f(x): return x + 1") -> dict:
    return {
        "turn_id": turn_id,
        "sample_index": j,
        "response": response,
        "code": response,
        "code_hash": f"{hash(response) & 0xFFFFFFFF:064x}",
        "completion_tokens": 7,
    }


def test_problem_lookups_filters_and_paging(store):
    _load(store, "toy", [_spec(f"toy/{i}", "train" if i < 6 else "test") for i in range(10)])
    assert store.get_problem("toy/3").external_id == "toy/3"
    p = store.get_problem("toy/7")
    assert store.get_problem(p.id).external_id == "toy/7" and store.get_problem(str(p.id)).id == p.id
    assert p.dataset.name == "toy" and p.split == "test"
    with pytest.raises(NotFound, match="toy/99"):
        store.get_problem("toy/99")
    assert [x.external_id for x in store.list_problems("toy", "train", limit=2, offset=1)] == [
        "toy/1",
        "toy/2",
    ]
    assert store.count_problems("toy") == 10 and store.count_problems("toy", "test") == 4
    assert store.count_problems("nope") == 0 and store.list_problems("nope") == []
    assert store.split_counts() == {"toy": {"train": 6, "test": 4}}
    assert set(store.get_problems([p.id, 10**9])) == {p.id}
    assert [d.name for d in store.list_datasets()] == ["toy"]


def test_problem_of_another_dataset_is_an_error_and_writes_nothing(store):
    _load(store, "toy", [_spec("toy/1")])
    with pytest.raises(DataError, match="another dataset"):
        _load(store, "other", [_spec("other/1"), _spec("toy/1")])
    assert [d.name for d in store.list_datasets()] == ["toy"]


def test_add_candidates_is_idempotent_and_returns_every_id(store, owner):
    _, _, turns = owner
    rows = [_candidate(t, j) for t in turns for j in range(3)]
    ids = store.add_candidates(rows)
    assert set(ids) == {(t, j) for t in turns for j in range(3)} and len(set(ids.values())) == len(rows)
    # Redelivered with other content, plus new rows and an in-batch duplicate: existing rows win, same ids.
    again = store.add_candidates(
        [_candidate(turns[0], 0, "changed")] + [_candidate(t, 3) for t in turns] + [_candidate(turns[0], 3)]
    )
    assert again[(turns[0], 0)] == ids[(turns[0], 0)] and len(again) == 1 + len(turns)
    with store.session() as s:
        assert s.scalar(select(func.count(m.Candidate.id))) == 4 * len(turns)
        first = s.get(m.Candidate, ids[(turns[0], 0)])
        assert first.response == "def f(x): return x + 1"
        # Columns the rows left out take the model defaults.
        assert first.sampling == {} and first.chosen is True and first.finish_reason is None


def test_bulk_rejects_unknown_columns_and_rolls_back_with_the_caller(store, owner):
    _, _, turns = owner
    with pytest.raises(ValueError, match="respnse"):
        store.add_candidates([{**_candidate(turns[0], 0), "respnse": "typo"}])
    with pytest.raises(RuntimeError, match="boom"), store.session() as s:
        store.add_candidates([_candidate(turns[0], 0)], s=s)
        store.add_executions([_execution("c" * 64, "public")], s=s)
        raise RuntimeError("boom")
    with store.session() as s:
        assert s.scalar(select(func.count(m.Candidate.id))) == 0
        assert s.scalar(select(func.count(m.Execution.id))) == 0


def _execution(code_hash: str, kind: str, status: str = "passed") -> dict:
    return {
        "code_hash": code_hash,
        "suite_hash": "s" * 64,
        "suite_kind": kind,
        "sandbox_version": "v1",
        "status": status,
        "passed": status == "passed",
        "tests": [{"test": "assert f(1) == 2", "outcome": status, "message": ""}],
        "duration_ms": 12.5,
    }


def test_add_executions_keeps_the_first_verdict(store):
    rows = [_execution(f"{i:064x}", kind) for i in range(50) for kind in ("public", "private")]
    ids = store.add_executions(rows)
    assert len(ids) == 100 and (f"{7:064x}", "s" * 64, "private", "v1") in ids
    again = store.add_executions(
        [_execution(f"{7:064x}", "private", "failed"), _execution(f"{99:064x}", "public")]
    )
    assert again[(f"{7:064x}", "s" * 64, "private", "v1")] == ids[(f"{7:064x}", "s" * 64, "private", "v1")]
    with store.session() as s:
        assert s.scalar(select(func.count(m.Execution.id))) == 101
        e = s.get(m.Execution, ids[(f"{7:064x}", "s" * 64, "private", "v1")])
        assert e.status == "passed" and e.tests[0]["test"] == "assert f(1) == 2" and e.feedback == ""


def test_add_rollouts_keys_round_and_evaluation_owners(store, owner):
    problem_id, round_id, _ = owner
    with store.session() as s:
        gen = m.ModelVersion(name="g", kind="generator", base_model="tiny", uri="tiny")
        s.add(gen)
        s.flush()
        ev = m.Evaluation(name="ev", generator_id=gen.id, dataset="toy", mode="bon")
        s.add(ev)
        s.flush()
        eval_id = ev.id
    ids = store.add_rollouts(
        [
            {"round_id": round_id, "problem_id": problem_id, "sample_index": 0, "seed": 0},  # exists already
            {"evaluation_id": eval_id, "problem_id": problem_id, "sample_index": 0, "seed": 5},
            {
                "round_id": None,
                "evaluation_id": eval_id,
                "problem_id": problem_id,
                "sample_index": 1,
                "seed": 6,
            },
        ]
    )
    assert set(ids) == {
        (round_id, None, problem_id, 0),
        (None, eval_id, problem_id, 0),
        (None, eval_id, problem_id, 1),
    }
    with store.session() as s:
        assert s.scalar(select(func.count(m.Rollout.id))) == 5


def test_copy_insert_ignore_without_ids(store):
    with store.session() as s:
        out = store.copy_insert_ignore(
            s,
            m.Execution.__table__,
            [_execution("a" * 64, "public")] * 3,
            ["code_hash", "suite_hash", "suite_kind", "sandbox_version"],
        )
        assert out == {}
        assert store.copy_insert_ignore(s, m.Execution.__table__, [], ["code_hash"]) == {}
    with store.session() as s:
        assert s.scalar(select(func.count(m.Execution.id))) == 1
