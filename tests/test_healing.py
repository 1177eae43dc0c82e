"""Transient faults heal without a human: jobs ride out database and broker outages (real private PostgreSQL and
Redis servers, stopped and started again by the test), and the healer tells lost work from work in flight."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.db import models as m
from app.errors import TransientError, clip, is_transient
from tests.helpers.seed import add_round
from tests.helpers.services import postgres_available, private_postgres, private_redis, redis_available

ROOT = Path(__file__).resolve().parents[1]


# -- what counts as an outage --------------------------------------------------------------------------------
def test_only_outages_are_transient(sqlite_store):
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError, OperationalError

    with pytest.raises(OperationalError) as bad_sql, sqlite_store.session() as s:
        s.execute(text("select * from no_such_table"))
    assert not is_transient(bad_sql.value)  # a bug is not waited out
    locked = OperationalError("INSERT ...", {}, __import__("sqlite3").OperationalError("database is locked"))
    assert is_transient(locked)
    assert not is_transient(IntegrityError("INSERT ...", {}, Exception("duplicate key")))
    assert is_transient(TransientError("the broker is down"))
    try:
        try:
            raise TransientError("cause")
        except TransientError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as exc:
        assert is_transient(exc)  # found along the chain
    assert not is_transient(ValueError("x"))


def test_clip_keeps_the_head_and_the_tail():
    text = "ValueError: the real cause\n" + "  frame\n" * 5000 + "  ^^^^^^^^\nlast line"
    out = clip(text, 2000)
    assert len(out) < 2100 and out.startswith("ValueError: the real cause") and out.endswith("last line")
    assert "characters cut" in out
    assert clip("short", 2000) == "short"


# -- a database outage ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL's initdb and pg_ctl")
def test_a_job_rides_out_a_database_outage(tmp_path, monkeypatch):
    """The database goes away (crash-like stop) while a job writes; the job waits, runs again once the server is
    back, and its row is written exactly once. A job's own error is raised at once."""
    from app.config import get_settings
    from app.store import Store
    from workers.healing import ride_out_outages

    monkeypatch.setenv("MUCODE_OUTAGE_WAIT_S", "120")
    get_settings.cache_clear()
    with private_postgres(tmp_path) as pg:
        store = Store(pg.url)
        store.upgrade()
        calls: list[BaseException | None] = []

        @ride_out_outages
        def job() -> int:
            try:
                store.record_job("collect/r1/g1/b0/sample/t0", "sample", "sample", {"batch": 0})
                n = store.job_started("collect/r1/g1/b0/sample/t0", worker="here:1")
            except Exception as exc:
                calls.append(exc)
                raise
            calls.append(None)
            return n

        pg.stop("immediate")
        back = threading.Timer(4.0, pg.start)
        back.start()
        t0 = time.monotonic()
        try:
            attempts = job()
        finally:
            back.join()
        assert time.monotonic() - t0 >= 3.5
        assert len(calls) >= 2 and all(is_transient(c) for c in calls[:-1]) and calls[-1] is None
        assert attempts == 1  # the failed tries wrote nothing
        assert [j.key for j in store.list_jobs()] == ["collect/r1/g1/b0/sample/t0"]

        @ride_out_outages
        def buggy() -> None:
            calls.append(None)
            raise KeyError("not an outage")

        calls.clear()
        with pytest.raises(KeyError):
            buggy()
        assert len(calls) == 1
        store.dispose()
    get_settings.cache_clear()


# -- a broker outage -------------------------------------------------------------------------------------------
SEND = """
import sys, time
from workers.dispatch import submit
t0 = time.monotonic()
submit("mucode.execute", candidate_ids=[1, 2], then=None)
print(f"sent after {time.monotonic() - t0:.1f} s")
"""


@pytest.mark.skipif(not redis_available(), reason="needs redis-server")
def test_queuing_a_job_rides_out_a_broker_restart(tmp_path):
    """The broker is down when a job queues its successor: the send is retried and the message arrives once the
    broker is back (a restart without data)."""
    import redis

    with private_redis(tmp_path) as rd:
        rd.stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MUCODE_")}
        env.update(MUCODE_BROKER_URL=rd.url, MUCODE_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}",
                   PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-c", SEND], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        assert proc.poll() is None, proc.communicate()  # still trying, not failed
        rd.start()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "sent after" in out
        client = redis.Redis.from_url(rd.url)
        assert client.llen("execute") == 1


# -- the healer's eye --------------------------------------------------------------------------------------------
def _job(store, key, state, *, round_id, age_s, worker=None, queue="sample", kind="sample"):
    store.record_job(key, kind, queue, {}, round_id=round_id)
    then = datetime.now(UTC) - timedelta(seconds=age_s)
    with store.session() as s:
        s.execute(update(m.Job).where(m.Job.key == key).values(
            state=state, worker=worker, queued_at=then, started_at=then if state == "running" else None))


def _round_with_collection(store, generation=2):
    from app.protocol import ExperimentConfig

    cfg = ExperimentConfig(base_model="tiny", train_datasets=["mbpp:train"]).model_dump(mode="json")
    store.create_experiment("exp", "mucode", "tiny", cfg)
    rid = add_round(store)
    store.update_round_step(rid, "collect", state="running", attempt=1)
    store.record_job(f"collect/r{rid}", "collect", "control", {}, round_id=rid)
    for _ in range(generation):
        store.bump_job_attempts(f"collect/r{rid}")
    return rid


def test_the_healer_tells_lost_work_from_work_in_flight(sqlite_store):
    from workers.healer import InFlight, inspect

    store = sqlite_store
    rid = _round_with_collection(store)
    key = f"collect/r{rid}/g2/b0/sample/t1"
    _job(store, key, "running", round_id=rid, age_s=600, worker="gone-host:4242")
    idle = dict.fromkeys(("sample", "execute", "score", "train", "control"), 0)

    (f,) = inspect(store, InFlight(depths=idle), grace=60)
    assert f.owner == ("round", rid) and key in f.reason and "gone-host:4242 is gone" in f.reason
    # The job's worker is alive and lists it: in flight, nothing to do.
    assert inspect(store, InFlight(keys={key}, workers={"gone-host:4242"}, depths=idle), grace=60) == []
    # The worker is alive but does not run it (it died while the database was down): lost all the same.
    (f,) = inspect(store, InFlight(workers={"gone-host:4242"}, depths=idle), grace=60)
    assert key in f.reason and "is gone" not in f.reason
    # Within the grace: it may have just started, before its worker's next heartbeat.
    assert inspect(store, InFlight(depths=idle), grace=3600) == []

    # A queued job whose queue is empty is lost; one behind other messages is waiting.
    store.claim_job(key, from_states=("running",), to_state="done")
    qkey = f"collect/r{rid}/g2/b0/execute/t1"
    _job(store, qkey, "queued", round_id=rid, age_s=600, queue="execute", kind="execute")
    (f,) = inspect(store, InFlight(depths=idle), grace=60)
    assert qkey in f.reason and "in no queue" in f.reason
    assert inspect(store, InFlight(depths={**idle, "execute": 3}), grace=60) == []
    assert inspect(store, InFlight(depths=None), grace=60) == []  # the broker cannot tell: never "lost"

    # Rows of a generation a resume replaced are superseded on the spot, without a resume.
    old = f"collect/r{rid}/g1/b0/sample/t1"
    _job(store, old, "running", round_id=rid, age_s=900, worker="gone-host:1")
    store.claim_job(qkey, from_states=("queued",), to_state="done")
    assert inspect(store, InFlight(depths=idle), grace=60)[0].reason == ""  # its last job ended just now
    with store.session() as s:
        then = datetime.now(UTC) - timedelta(seconds=600)
        s.execute(update(m.Job).values(queued_at=then, finished_at=then))
    (f,) = inspect(store, InFlight(depths=idle), grace=60)
    assert f.stale == [old]
    assert f.reason == "nothing is queued or running for it"  # and then nothing is left: its round_step was lost
    assert inspect(store, InFlight(depths={**idle, "control": 1}), grace=60)[0].reason == ""


def test_a_stalled_round_is_resumed_on_the_second_sweep_only(sqlite_store, monkeypatch):
    """One look is not enough (a job may be between two heartbeats): the healer acts when two sweeps in a row
    find the same round stalled, marks the rows it found superseded, and counts its heals on the step."""
    from workers import healer as H

    store = sqlite_store
    rid = _round_with_collection(store)
    key = f"collect/r{rid}/g2/b0/sample/t1"
    _job(store, key, "running", round_id=rid, age_s=600, worker="gone-host:4242")
    idle = H.InFlight(depths=dict.fromkeys(("sample", "execute", "score", "train", "control"), 0))
    resumed: list[int] = []
    monkeypatch.setattr("workers.tasks.rounds.queue_round", lambda round_id: resumed.append(round_id))
    h = H.Healer(store, "redis://unused", interval=1, grace=60)
    assert h.sweep(idle) == [] and resumed == []
    (action,) = h.sweep(idle)
    assert action["action"] == "resumed" and resumed == [rid]
    rec = store.get_round(rid).steps["collect"]
    assert rec["state"] == "pending" and rec["heals"] == 1 and key in rec["healed"]
    # Too many heals in an hour: the round fails with the reason, for a human.
    store.update_round_step(rid, "collect", state="running")
    for _ in range(H.MAX_HEALS):
        h.heals.setdefault(("round", rid), []).append(time.monotonic())
    h.suspects = {("round", rid): "x"}
    (action,) = h.sweep(idle)
    assert action["action"] == "failed"
    rnd = store.get_round(rid)
    assert rnd.status == "failed" and "not resumed automatically again" in rnd.error


def test_status_shows_no_failure_during_a_resume(sqlite_store, monkeypatch):
    """A failed collection job fails its round in every view (the round's own row too); ``round resume`` hands
    the failed job to the new generation at once, so a status read before the new generation starts (what
    ``round resume --wait`` polls) says running, not failed."""
    from workers import collect
    from workers.tasks.rounds import resume_round, round_status

    store = sqlite_store
    rid = _round_with_collection(store, generation=1)
    store.update_job(f"collect/r{rid}", payload={"spec": {"generator": "x"}})
    key = f"collect/r{rid}/g1/b0/sample/t1"
    _job(store, key, "running", round_id=rid, age_s=5, worker="here:1")
    collect.job_failed_for_good(store, key, "ValueError: the model said no\n" + "  frame\n" * 3000)
    rnd = store.get_round(rid)
    assert rnd.status == "failed" and rnd.error.startswith("collect: job") and rnd.finished_at is not None
    assert rnd.steps["collect"]["state"] == "failed"
    job = store.get_job(key)
    assert job.state == "failed" and job.error.startswith("ValueError: the model said no")  # the cause, kept

    queued: list[int] = []
    monkeypatch.setattr("workers.tasks.rounds.queue_round", lambda round_id: queued.append(round_id))
    monkeypatch.setattr("workers.collect.get_spec", lambda store, owner: (None, 1, "running"))
    resume_round(store, rid)
    assert queued == [rid]
    st = round_status(store, rid)
    assert st["status"] == "running" and not st["failed_jobs"], st
    assert store.get_job(key).state == "superseded" and "the model said no" in store.get_job(key).error
    assert store.get_round(rid).status == "running"


def test_a_late_message_of_a_superseded_job_leaves_its_row_alone(sqlite_store):
    store = sqlite_store
    store.record_job("round/1/train_verifier/a1", "train_verifier", "train", {})
    store.job_started("round/1/train_verifier/a1", worker="here:1")
    assert store.supersede_job("round/1/train_verifier/a1", "the round was resumed")
    store.job_done("round/1/train_verifier/a1", {"late": True})  # the old attempt's message, redelivered
    store.job_failed("round/1/train_verifier/a1", "late error")
    job = store.get_job("round/1/train_verifier/a1")
    assert job.state == "superseded" and job.error == "the round was resumed" and job.result == {}
