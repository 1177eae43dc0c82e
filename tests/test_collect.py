"""The collection pipeline in embedded mode (no broker: the same tasks run in-process), with the tiny model,
the real sandbox and real MBPP problems: exact row counts, resume after a crash between sample and execute,
superseded generations, Best-of-N selection, and the CLI's errors. test_collect_celery.py runs the same
pipeline on Postgres with real Celery workers."""

from __future__ import annotations

import subprocess

import pytest
from sqlalchemy import func, select

from app.db import models as m
from tests.helpers.cli import run_mucode
from tests.helpers.collect import (
    SINGLE_THREAD_ENV,
    assert_collection_exact,
    load_mbpp,
    make_collection,
    snapshot,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _url(store) -> str:
    return store.engine.url.render_as_string(hide_password=False)


@pytest.fixture
def embedded(monkeypatch):
    """Point the settings (and thus the tasks' own stores) at a test store, with no broker."""
    from app.config import get_settings

    def use(store, broker: str | None = None):
        monkeypatch.setenv("MUCODE_DATABASE_URL", _url(store))
        if broker is None:
            monkeypatch.delenv("MUCODE_BROKER_URL", raising=False)
        else:
            monkeypatch.setenv("MUCODE_BROKER_URL", broker)
        get_settings.cache_clear()
        return store

    yield use
    monkeypatch.delenv("MUCODE_BROKER_URL", raising=False)
    get_settings.cache_clear()


def _jobs(store, owner, states=None):
    from workers.collect import collect_key

    return store.list_jobs(key_prefix=collect_key(owner) + "/", states=states)


def test_embedded_collection_is_exact_and_resume_is_a_no_op(sqlite_store, tiny_model, embedded):
    from workers import collect

    store = embedded(sqlite_store)
    load_mbpp(store)
    owner = make_collection(store, tiny_model, "emb", problems=8, M=2, T=2, batch_size=4)
    out = collect.start(store, owner)  # in-process: returns when every job has run
    assert out["queued_batches"] == 4
    counts = assert_collection_exact(store, owner, P=8, M=2, T=2)
    assert counts["done"] == 16 and counts["completion_tokens"] > 0
    # the random tiny model fails these problems, so trajectories go to the second turn
    assert counts["done_by_turns"].get(2, 0) > 0
    st = collect.status(store, owner)
    assert st["done"] and st["state"] == "done" and not st["failed_jobs"]
    assert store.get_evaluation(owner.evaluation_id).status == "done"
    jobs = _jobs(store, owner)
    assert jobs and all(j.state == "done" for j in jobs), [
        (j.key, j.state) for j in jobs if j.state != "done"
    ]
    # 4 batches x (sample t0, execute t1, sample t1, execute t2, sample t2) at most
    assert {j.kind for j in jobs} == {"sample", "execute"}
    before = snapshot(store, owner)
    again = collect.resume(store, owner)
    assert again["queued_batches"] == 0 and again["finished"]
    assert snapshot(store, owner) == before
    assert_collection_exact(store, owner, P=8, M=2, T=2)


def test_crash_between_sample_and_execute_resumes_without_sampling_again(sqlite_store, tiny_model, embedded):
    """A worker dies right after a batch's turn 1 was sampled and written, before its execute job was queued.
    The state is built with the pipeline's own steps; resume executes those candidates (it does not sample
    them again) and finishes."""
    from app.env import initial_messages
    from workers import collect

    store = embedded(sqlite_store)
    load_mbpp(store)
    owner = make_collection(store, tiny_model, "crash", problems=4, M=2, T=2, batch_size=8)
    spec, _, _ = collect.get_spec(store, owner)
    [(ids, _)] = collect.batches(store, owner, 8)
    states = store.batch_state(ids)
    problems = store.collection_problems(r.problem_id for r in states)
    store.open_turns(
        [
            {"rollout_id": r.id, "index": 1, "messages": initial_messages(problems[r.problem_id])}
            for r in states
        ]
    )
    collect.sample_open_turns(store, spec, store.batch_state(ids), collect.load_backend)
    with store.session() as s:
        first = dict(s.execute(select(m.Candidate.id, m.Candidate.response)).all())
        assert len(first) == 8
        assert s.execute(select(func.count()).where(m.Candidate.public_passed.isnot(None))).scalar_one() == 0
    out = collect.resume(store, owner)
    assert out["queued_batches"] == 1
    assert_collection_exact(store, owner, P=4, M=2, T=2)
    with store.session() as s:
        turn1 = dict(
            s.execute(
                select(m.Candidate.id, m.Candidate.response).join(m.Turn).where(m.Turn.index == 1)
            ).all()
        )
    assert turn1 == first  # the same rows: nothing was sampled twice
    first_job = store.get_job(collect.step_key(owner, out["generation"], 0, "sample", 0))
    assert first_job.result["sampled"] == 0 and first_job.result["queued"] == "execute"


def test_a_superseded_generation_does_nothing(sqlite_store, tiny_model, embedded):
    from workers import collect

    store = embedded(sqlite_store)
    load_mbpp(store)
    owner = make_collection(store, tiny_model, "gen", problems=2, M=1, T=1)
    [(ids, _)] = collect.batches(store, owner, 4)
    store.bump_job_attempts(collect.collect_key(owner))
    store.bump_job_attempts(collect.collect_key(owner))
    out = collect.run_sample_job(store, owner=owner.as_dict(), batch=0, rollout_ids=ids, generation=1)
    assert out == {"superseded_by": 2}
    assert store.collection_counts(owner)["turns"] == 0


def test_same_seeds_same_responses_and_batching_does_not_matter(sqlite_store, tiny_model, embedded, tmp_path):
    """Seeds come from (collection seed, problem, sample index, turn), not from database ids or batches."""
    from app.store import Store
    from workers import collect

    store = embedded(sqlite_store)
    load_mbpp(store)
    a = make_collection(store, tiny_model, "a", problems=2, M=2, T=2, batch_size=4)
    collect.start(store, a)
    other = Store(f"sqlite:///{tmp_path / 'other.db'}")
    other.upgrade()
    embedded(other)
    load_mbpp(other)
    b = make_collection(other, tiny_model, "b", problems=2, M=2, T=2, batch_size=1)
    collect.start(other, b)
    assert snapshot(store, a) == snapshot(other, b)
    other.dispose()


@pytest.mark.parametrize("selector", ["pt", "random"])
def test_best_of_n_chains(sqlite_store, tiny_model, embedded, selector):
    from app.selection import select as pick
    from app.selection import selection_seed
    from workers import collect

    store = embedded(sqlite_store)
    load_mbpp(store)
    owner = make_collection(
        store, tiny_model, f"bon-{selector}", problems=3, M=2, T=2, N=3, selector=selector, temperature=1.0
    )
    collect.start(store, owner)
    assert_collection_exact(store, owner, P=3, M=2, T=2, N=3)
    with store.session() as s:
        turns = s.execute(select(m.Turn, m.Rollout.seed).join(m.Rollout)).all()
        for t, seed in turns:
            cands = sorted(t.candidates, key=lambda c: c.sample_index)
            assert len({c.response for c in cands}) > 1  # N different samples
            expected = pick(selector, cands, seed=selection_seed(seed, t.index))
            assert [c.chosen for c in cands] == [c.id == expected.id for c in cands]


def test_best_of_n_with_verifier_scores(sqlite_store, tiny_model, embedded):
    """pt+lv chains score every candidate (execute -> score -> sample) and pick by 100*public + score."""
    from app.selection import select as pick
    from workers import collect

    store = embedded(sqlite_store)
    load_mbpp(store)
    vid = store.add_verifier_version(name="tiny-verifier", base_model=tiny_model, uri=tiny_model, config={})
    owner = make_collection(
        store,
        tiny_model,
        "bon-lv",
        problems=2,
        M=1,
        T=2,
        N=3,
        selector="pt+lv",
        verifier_id=vid,
        temperature=1.0,
    )
    collect.start(store, owner)
    assert_collection_exact(store, owner, P=2, M=1, T=2, N=3)
    scores = store.verifier_scores(vid)
    with store.session() as s:
        turns = s.execute(select(m.Turn)).scalars().all()
        for t in turns:
            cands = sorted(t.candidates, key=lambda c: c.sample_index)
            for c in cands:
                c.score = scores[c.id]
            expected = pick("pt+lv", cands)
            assert [c.chosen for c in cands] == [c.id == expected.id for c in cands]
    assert {j.kind for j in _jobs(store, owner)} == {"sample", "execute", "score"}


# -- CLI -------------------------------------------------------------------------------------------------
def _mucode(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return run_mucode(args, {**SINGLE_THREAD_ENV, **env}, timeout=timeout)


def test_cli_collect_status_resume_embedded(sqlite_store, tiny_model):
    import json

    load_mbpp(sqlite_store)
    env = {"MUCODE_DATABASE_URL": _url(sqlite_store), "MUCODE_BROKER_URL": ""}
    args = [
        "rollouts",
        "collect",
        "--model",
        tiny_model,
        "--dataset",
        "mbpp:train",
        "--limit",
        "3",
        "-M",
        "2",
        "-T",
        "2",
        "--max-new-tokens",
        "24",
        "--name",
        "cli",
        "--json",
    ]
    r = _mucode(args, env)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["done"] and st["counts"]["rollouts"] == 6 and st["counts"]["active"] == 0
    r = _mucode(["rollouts", "status", "cli"], env)
    assert r.returncode == 0 and "6/6 rollouts done" in r.stdout, r.stdout + r.stderr
    r = _mucode(["rollouts", "resume", "cli", "--json"], env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"] == st["counts"]
    r = _mucode(["rollouts", "status", "nope"], env)
    assert r.returncode == 2 and "no evaluation or collection named 'nope'" in r.stderr


def test_cli_missing_model_is_a_clear_error_before_anything_is_written(sqlite_store, tmp_path):
    load_mbpp(sqlite_store)
    missing = str(tmp_path / "no-such-model")
    env = {"MUCODE_DATABASE_URL": _url(sqlite_store), "MUCODE_BROKER_URL": ""}
    r = _mucode(["rollouts", "collect", "--model", missing, "--limit", "2", "--name", "x"], env)
    assert r.returncode == 2
    assert "no-such-model" in r.stderr and "Traceback" not in r.stderr
    with sqlite_store.session() as s:
        assert s.execute(select(func.count()).select_from(m.Evaluation)).scalar_one() == 0
        assert s.execute(select(func.count()).select_from(m.Rollout)).scalar_one() == 0


def test_a_model_that_vanished_is_an_error_before_queueing(sqlite_store, tiny_model, embedded, tmp_path):
    """A generator whose folder disappeared after the collection was created: resume refuses clearly."""
    import shutil

    from app.errors import NotFound
    from workers import collect

    store = embedded(sqlite_store)
    load_mbpp(store)
    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_model, copy)
    owner = make_collection(store, str(copy), "vanish", problems=2, M=1, T=1)
    shutil.rmtree(copy)
    with pytest.raises(NotFound, match="model-copy"):
        collect.start(store, owner)
    assert store.collection_counts(owner)["turns"] == 0
    assert _jobs(store, owner) == []


def test_cli_unreachable_broker_is_a_clear_error(sqlite_store, tiny_model):
    load_mbpp(sqlite_store)
    env = {"MUCODE_DATABASE_URL": _url(sqlite_store), "MUCODE_BROKER_URL": "redis://127.0.0.1:1/0"}
    r = _mucode(
        ["rollouts", "collect", "--model", tiny_model, "--limit", "2", "--name", "x"], env, timeout=120
    )
    assert r.returncode == 2
    assert "cannot reach the broker at redis://127.0.0.1:1/0" in r.stderr and "Traceback" not in r.stderr
    with sqlite_store.session() as s:
        assert s.execute(select(func.count()).select_from(m.Evaluation)).scalar_one() == 0


class _FixedBackend:
    """A stand-in at the GPU boundary: returns a fixed text (with a NUL character, as random models emit)."""

    kind = "transformers"

    def __init__(self, text):
        self.text = text

    def generate(self, conversations, params, seeds):
        from workers.backends.base import Sample

        return [[Sample(self.text, 10, 5, "stop", seed) for _ in range(params.n)] for seed in seeds]


def test_a_nul_character_in_a_response_is_stored_on_both_databases(store, tiny_model):
    from app.env import initial_messages
    from workers import collect

    load_mbpp(store)
    owner = make_collection(store, tiny_model, "nul", problems=1, M=1, T=1)
    spec, _, _ = collect.get_spec(store, owner)
    [(ids, _)] = collect.batches(store, owner, 4)
    [r] = store.batch_state(ids)
    problem = store.collection_problems([r.problem_id])[r.problem_id]
    store.open_turns([{"rollout_id": r.id, "index": 1, "messages": initial_messages(problem)}])
    backend = _FixedBackend("```python\ndef f():\n    return '\x00'\n```")
    collect.sample_open_turns(store, spec, store.batch_state(ids), lambda kind, uri: backend)
    with store.session() as s:
        c = s.execute(select(m.Candidate)).scalar_one()
    assert "\x00" not in c.response and "\ufffd" in c.response and "\ufffd" in c.code


def test_resume_marks_a_lost_job_superseded_not_failed(sqlite_store, tiny_model, embedded):
    """A job left running by a killed worker is superseded by the resume: no status (however it interleaves with
    the resume) may take it for a failure of the collection."""
    from workers import collect

    store = embedded(sqlite_store)
    load_mbpp(store)
    owner = make_collection(store, tiny_model, "lost", problems=2, M=1, T=1)
    [(_ids, _)] = collect.batches(store, owner, 4)
    generation = store.bump_job_attempts(collect.collect_key(owner))  # as start() did before the worker died
    lost = collect.step_key(owner, generation, 0, "sample", 0)
    store.job_started(lost, worker="killed", kind="sample", queue="sample", **owner.as_dict())
    out = collect.resume(store, owner)  # embedded: the new generation runs to the end here
    assert out["generation"] == generation + 1
    job = store.get_job(lost)
    assert job.state == "superseded" and f"generation {generation + 1}" in job.error
    assert store.list_jobs(key_prefix=collect.collect_key(owner) + "/", states=("failed",)) == []
    st = collect.status(store, owner)
    assert st["done"] and st["failed_jobs"] == [] and st["jobs"]["sample"]["superseded"] == 1
