"""The collection on Postgres with real Celery worker processes on Redis: a sample worker and an execute worker
(separate processes), one of them killed with SIGKILL in the middle, a fresh one started, ``resume``, and the
final rows are exact -- and identical to the same collection run in embedded mode on SQLite."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from app.db import models as m
from tests.helpers.cli import run_mucode, wait_for
from tests.helpers.collect import SINGLE_THREAD_ENV, assert_collection_exact, load_mbpp, snapshot
from tests.helpers.workers import celery_workers, redis_db

P, M, T = 8, 2, 2
ARGS = [
    "--dataset",
    "mbpp:train",
    "--limit",
    str(P),
    "-M",
    str(M),
    "-T",
    str(T),
    "--max-new-tokens",
    "128",
    "--batch-size",
    "2",
    "--seed",
    "3",
]


def _mucode(args, env, timeout=120):
    return run_mucode(args, env, ok=True, timeout=timeout)


def _url(store) -> str:
    return store.engine.url.render_as_string(hide_password=False)


def _running(store, kind):
    jobs = store.list_jobs(kinds=[kind], states=["running"])
    return jobs[0].key if jobs else None


def _counts(store, name):
    """The collection's counts (None before it exists); a failed job of the current generation fails the test
    at once instead of waiting for a timeout."""
    from app.store.rollouts import Owner
    from workers import collect

    ev = store.find_evaluation(name)
    if ev is None or store.get_job(collect.collect_key(Owner(evaluation_id=ev.id))) is None:
        return None
    st = collect.status(store, Owner(evaluation_id=ev.id))
    assert not st["failed_jobs"], st["failed_jobs"]
    return st["counts"]


@pytest.mark.parametrize("victim", ["sample", "execute"])
def test_kill_a_worker_mid_collection_then_resume_gives_exact_rows(
    pg_store, sqlite_store, tiny_model, tmp_path, victim
):
    from app.store.rollouts import Owner
    from workers import collect

    t0 = time.monotonic()

    def phase(what):  # progress with timings, visible with -s
        print(f"[{time.monotonic() - t0:6.1f} s] {what}", flush=True)

    load_mbpp(pg_store)
    with (
        redis_db() as broker,
        celery_workers(_url(pg_store), broker, log_dir=tmp_path, extra_env=SINGLE_THREAD_ENV) as workers,
    ):
        env = {"MUCODE_DATABASE_URL": _url(pg_store), "MUCODE_BROKER_URL": broker}
        sampler = workers.start("sample")
        executor = workers.start("execute")
        phase("workers ready")
        _mucode(["rollouts", "collect", "--model", tiny_model, *ARGS, "--name", "kill"], env)
        # wait until the pipeline is well under way, then kill -9 one of the workers
        wait_for(
            lambda: (c := _counts(pg_store, "kill")) and c["candidates"] >= 4 and c["executed"] >= 2,
            90,
            "the first candidates",
            workers,
        )
        interrupted = None
        if victim == "sample":  # kill it in the middle of a job (sampling 128 tokens is the long part)
            interrupted = wait_for(lambda: _running(pg_store, "sample"), 30, "a running sample job", workers)
        (sampler if victim == "sample" else executor).kill()
        phase(f"killed the {victim} worker")
        middle = _counts(pg_store, "kill")
        assert middle["active"] > 0, "the collection finished before the kill: make it bigger"
        if victim == "sample":
            workers.start("sample")
        else:
            workers.start("execute")
        phase("new worker ready")
        r = _mucode(["rollouts", "resume", "kill", "--json"], env)
        assert json.loads(r.stdout)["generation"] == 2
        wait_for(
            lambda: (
                (c := _counts(pg_store, "kill")) and c["active"] == 0 and c["executed"] == c["candidates"]
            ),
            120,
            "the collection to finish",
            workers,
        )
        phase("collection done")
        # let stragglers of the first generation (queued before the kill) drain: they must change nothing
        time.sleep(1.0)
        owner = Owner(evaluation_id=pg_store.find_evaluation("kill").id)
        counts = assert_collection_exact(pg_store, owner, P=P, M=M, T=T)
        st = collect.status(pg_store, owner)
        assert st["done"] and not st["failed_jobs"] and st["generation"] == 2
        workers_seen = {
            j.worker
            for j in pg_store.list_jobs(key_prefix=collect.collect_key(owner) + "/", kinds=["sample"])
            if j.worker
        }
        if victim == "sample":
            assert len(workers_seen) == 2, workers_seen  # the killed sampler and the new one
            job = pg_store.get_job(interrupted)
            if job.state != "done":  # the kill hit it mid-job (almost always): resume marked it
                assert job.state == "superseded" and "generation 2" in job.error, (job.state, job.error)
            phase(f"interrupted job {interrupted}: {job.state}")

    if victim != "sample":
        return
    # The same collection in embedded mode (SQLite, no broker) gives the same rows.
    env = {"MUCODE_DATABASE_URL": _url(sqlite_store), "MUCODE_BROKER_URL": ""}
    load_mbpp(sqlite_store)
    _mucode(["rollouts", "collect", "--model", tiny_model, *ARGS, "--name", "kill"], env, timeout=300)
    phase("embedded run done")
    sowner = Owner(evaluation_id=sqlite_store.find_evaluation("kill").id)
    assert assert_collection_exact(sqlite_store, sowner, P=P, M=M, T=T) == counts
    assert snapshot(sqlite_store, sowner) == snapshot(pg_store, owner)
    with pg_store.session() as s:
        assert s.execute(select(func.count()).select_from(m.Rollout)).scalar_one() == P * M
