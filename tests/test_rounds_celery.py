"""A round on Postgres with real Celery worker processes on Redis (GPU-queue worker: sample+score+train, solo;
an execute worker; a control worker) and the tiny model that knows some answers:

- ``round run --wait`` completes the whole round and every number is stored;
- the GPU-queue worker killed with SIGKILL in the middle of the collection, a fresh one started,
  ``round resume``: the round completes with exact row counts (nothing lost, nothing doubled).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from app.db import models as m
from tests.helpers.cli import run_mucode, wait_for
from tests.helpers.collect import load_mbpp
from tests.helpers.workers import celery_workers, redis_db
from tests.test_rounds import P_TRAIN, check_round_rows, small_config
from tests.test_rounds import knowing_model as knowing_model

GPU = "sample,score,train"


def _mucode(args, env, timeout=900):
    return run_mucode(args, env, ok=True, timeout=timeout)


def _url(store) -> str:
    return store.engine.url.render_as_string(hide_password=False)


def _collect_counts(store, experiment_id: int) -> dict | None:
    """The first round's collection counts, once its collection exists (None before)."""
    from app.store.rollouts import Owner

    rounds = store.experiment_rounds(experiment_id)
    if not rounds or "collect" not in (rounds[0].steps or {}):
        return None
    try:
        return store.collection_counts(Owner(round_id=rounds[0].id))
    except Exception:  # noqa: BLE001 - created a moment later
        return None


def _setup(store, tmp_path, model, name):
    load_mbpp(store)
    cfg = tmp_path / f"{name}.json"
    cfg.write_text(json.dumps(small_config(model)))
    return cfg


def _env(store, broker, tmp_path):
    return {"MUCODE_DATABASE_URL": _url(store), "MUCODE_BROKER_URL": broker,
            "MUCODE_ARTIFACTS_DIR": str(tmp_path / "art"), "COLUMNS": "200"}


@contextmanager
def _round_workers(store, tmp_path, extra_env: dict[str, str] | None = None):
    """A broker and a round's three workers (GPU: sample, score, train; execute; control): (broker, workers,
    the GPU worker)."""
    extra = {"MUCODE_ARTIFACTS_DIR": str(tmp_path / "art"), **(extra_env or {})}
    with redis_db() as broker, celery_workers(_url(store), broker, log_dir=tmp_path, extra_env=extra) as workers:
        gpu = workers.start(GPU)
        workers.start("execute")
        workers.start("control")
        yield broker, workers, gpu


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_round_with_celery_workers_completes_and_stores_its_numbers(pg_store, tmp_path, knowing_model):
    cfg = _setup(pg_store, tmp_path, knowing_model, "c1")
    with _round_workers(pg_store, tmp_path) as (broker, workers, _):
        env = _env(pg_store, broker, tmp_path)
        _mucode(["experiment", "create", "c1", "--config", str(cfg)], env)
        try:
            r = _mucode(["round", "run", "c1", "--wait"], env)
        except AssertionError:
            print(workers.logs())
            raise
        assert "done" in r.stdout and "G0 with RM0" in r.stdout
        res = check_round_rows(pg_store, "c1")
        st = json.loads(_mucode(["round", "status", "c1", "--json"], env).stdout)
        assert st["status"] == "done" and not st["failed_jobs"]
        assert set(st["queues"]) == {"sample", "execute", "score", "train", "control"}
        assert all(v == 0 for v in st["queues"].values())
        assert st["jobs"]["train_verifier"] == {"done": 1} and st["jobs"]["train_generator"] == {"done": 1}
        # the GPU steps ran in the GPU worker, the relabel in the control worker
        jobs = {j.kind: j for j in pg_store.list_jobs(round_id=res["round"].id) if j.key.startswith("round/")}
        assert "sample" in (jobs["train_verifier"].worker or "") or jobs["train_verifier"].worker
        assert jobs["relabel"].state == "done"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_killed_worker_mid_round_then_resume_gives_exact_rows(pg_store, tmp_path, knowing_model):
    from app.store.rollouts import Owner
    from workers import collect

    cfg = _setup(pg_store, tmp_path, knowing_model, "c2")
    with _round_workers(pg_store, tmp_path) as (broker, workers, gpu):
        env = _env(pg_store, broker, tmp_path)
        _mucode(["experiment", "create", "c2", "--config", str(cfg)], env)
        r = _mucode(["round", "run", "c2"], env)  # returns once queued
        assert "queued" in r.stdout
        exp = pg_store.get_experiment("c2")

        def counts():
            return _collect_counts(pg_store, exp.id)

        wait_for(lambda: (c := counts()) and c["candidates"] >= 2, 240, "the first candidates", workers)
        gpu.kill()  # SIGKILL: its running job is lost with it
        middle = counts()
        assert middle["active"] > 0, "the collection finished before the kill: make it bigger"
        # The resume comes before a new GPU worker: with one already running, the sample jobs still queued
        # could finish the collection first (the killed worker may have been between jobs), and the resume
        # would then retry a later step instead.
        r = _mucode(["round", "resume", "c2", "--json"], env)
        assert json.loads(r.stdout)["status"] in ("running", "done")
        workers.start(GPU)
        (rnd,) = pg_store.experiment_rounds(exp.id)
        wait_for(lambda: pg_store.get_round(rnd.id).status in ("done", "failed"), 900, "the round to finish", workers)
        rnd = pg_store.get_round(rnd.id)
        assert rnd.status == "done", (rnd.error, rnd.steps, workers.logs())
        res = check_round_rows(pg_store, "c2")
        # the collection was resumed as generation 2; no trajectory, turn or candidate is doubled
        assert rnd.steps["collect"]["attempt"] == 2
        assert collect.get_spec(pg_store, Owner(round_id=rnd.id))[1] == 2
        with pg_store.session() as s:
            dup = s.execute(
                select(func.count()).select_from(
                    select(m.Candidate.turn_id, m.Candidate.sample_index).group_by(m.Candidate.turn_id,
                    m.Candidate.sample_index).having(func.count() > 1).subquery())).scalar_one()
            assert dup == 0
            assert res["rollouts"] == P_TRAIN * 4


# Heartbeats, sweeps and grace shortened so that the healer acts within seconds (defaults: 10 s, 20 s, 60 s).
FAST_HEALER = {"MUCODE_HEARTBEAT_S": "1", "MUCODE_HEALER_SWEEP_S": "2", "MUCODE_HEALER_GRACE_S": "6"}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_killed_worker_mid_round_heals_without_a_resume(pg_store, tmp_path, knowing_model):
    """The GPU worker is killed with SIGKILL in the middle of the collection and a fresh one started; nobody runs
    ``round resume``. The control worker's healer finds the job that no live worker runs, resumes the round, and
    the round finishes with exact rows; no status read on the way says "failed"."""
    from workers.tasks.rounds import round_status

    cfg = _setup(pg_store, tmp_path, knowing_model, "c3")
    with _round_workers(pg_store, tmp_path, FAST_HEALER) as (broker, workers, gpu):
        env = {**_env(pg_store, broker, tmp_path), **FAST_HEALER}
        _mucode(["experiment", "create", "c3", "--config", str(cfg)], env)
        _mucode(["round", "run", "c3"], env)
        exp = pg_store.get_experiment("c3")

        def counts():
            return _collect_counts(pg_store, exp.id)

        wait_for(lambda: (c := counts()) and c["candidates"] >= 2, 240, "the first candidates", workers)
        first_in = datetime.now(UTC)

        def sampling_anew() -> bool:
            """A sample job started after the first candidates were written: killed now, its work is lost (a
            kill between jobs, or at the end of the job that wrote them, would lose nothing to heal)."""
            return any(j.started_at is not None and j.started_at.replace(tzinfo=j.started_at.tzinfo or UTC)
                       > first_in for j in pg_store.list_jobs(kinds=["sample"], states=["running"]))

        wait_for(sampling_anew, 240, "a sample job started after the first candidates", workers, every=0.05)
        gpu.kill()
        assert counts()["active"] > 0, "the collection finished before the kill: make it bigger"
        killed_at = time.monotonic()
        workers.start(GPU)
        (rnd,) = pg_store.experiment_rounds(exp.id)
        seen: list[str] = []

        def finished():
            seen.append(round_status(pg_store, rnd.id)["status"])
            return pg_store.get_round(rnd.id).status in ("done", "failed")

        wait_for(finished, 900, "the round to finish by itself", workers)
        rnd = pg_store.get_round(rnd.id)
        assert rnd.status == "done", (rnd.error, rnd.steps, workers.logs())
        assert "failed" not in seen
        check_round_rows(pg_store, "c3")
        collect_rec = rnd.steps["collect"]
        assert collect_rec["attempt"] == 2 and collect_rec["heals"] == 1, collect_rec
        assert "is not running anywhere" in collect_rec["healed"]
        print(f"healed and finished {time.monotonic() - killed_at:.0f} s after the kill")
