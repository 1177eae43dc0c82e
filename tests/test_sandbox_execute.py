"""The execute task: candidates -> executions (public and private), cached per code and suite, written once,
idempotent under redelivery, infrastructure errors retried and never stored as wrong answers."""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import func, select

from app.db import models as m
from app.hashing import code_hash
from app.sandbox import SANDBOX_VERSION, InfraError, Limits, Sandbox
from tests.helpers.procs import process_table
from tests.helpers.seed import add_problem, add_round
from workers.tasks.execute import execute_candidates

pytestmark = pytest.mark.timeout(600)

PUBLIC = ["assert f(1) == 2"]
PRIVATE = ["assert f(1) == 2", "assert f(2) == 3", "assert f(10) == 11"]
CODES = {
    "right": "def f(x):\n    return x + 1\n",
    "public_only": "def f(x):\n    return 2\n",
    "wrong": "def f(x):\n    return x\n",
    "syntax": "def f(x)\n    return x\n",
}


def add_candidates(store, problem_id: int, round_id: int, codes: list[str], *, rollout: int = 0) -> list[int]:
    """One rollout with one turn holding one candidate per code (built through the ORM)."""
    with store.session() as s:
        ro = m.Rollout(round_id=round_id, problem_id=problem_id, sample_index=rollout, seed=rollout, num_turns=1)
        s.add(ro)
        s.flush()
        turn = m.Turn(rollout_id=ro.id, index=1, messages=[{"role": "user", "content": "write f"}])
        s.add(turn)
        s.flush()
        cands = [m.Candidate(turn_id=turn.id, sample_index=i, response=f"```python\n{c}```", code=c,
                             code_hash=code_hash(c)) for i, c in enumerate(codes)]
        s.add_all(cands)
        s.flush()
        return [c.id for c in cands]


def count_executions(store) -> int:
    with store.session() as s:
        return s.execute(select(func.count()).select_from(m.Execution)).scalar_one()


def verdicts(store, ids) -> dict[int, tuple]:
    with store.session() as s:
        rows = s.execute(select(m.Candidate.id, m.Candidate.public_passed, m.Candidate.private_passed)
                         .where(m.Candidate.id.in_(ids)))
        return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=2, limits=Limits(timeout_s=10)) as s:
        yield s


def test_executes_public_and_private_once_and_records_verdicts(store, sb):
    pid = add_problem(store, "mbpp/9001", public_tests=PUBLIC, private_tests=PRIVATE)
    rid = add_round(store)
    codes = [CODES["right"], CODES["public_only"], CODES["wrong"], CODES["syntax"], CODES["right"]]
    ids = add_candidates(store, pid, rid, codes)
    stats: dict = {}
    out = execute_candidates(store, ids, sandbox=sb, stats=stats)
    assert stats["candidates"] == 5 and stats["executions"] == 8 and stats["ran"] == 8 and stats["cached"] == 0
    assert count_executions(store) == 8  # 4 distinct codes x 2 suites: the duplicate code shares its rows
    assert out[ids[0]]["public"].id == out[ids[4]]["public"].id
    assert [(out[i]["public"].status, out[i]["private"].status) for i in ids[:4]] == [
        ("passed", "passed"), ("passed", "failed"), ("failed", "failed"), ("error", "error")]
    assert out[ids[1]]["private"].feedback == "Failed test: assert f(2) == 3\nAssertionError"
    assert [len(out[i]["private"].tests) for i in ids] == [3] * 5
    e = out[ids[0]]["private"]
    # The default harness (the reference's import prelude) is tagged in the key.
    assert (e.code_hash, e.suite_kind, e.sandbox_version) == (code_hash(CODES["right"]), "private",
                                                              f"{SANDBOX_VERSION}+prelude")
    assert verdicts(store, ids) == {ids[0]: (True, True), ids[1]: (True, False), ids[2]: (False, False),
                                    ids[3]: (False, False), ids[4]: (True, True)}

    # Redelivered: everything is cached, nothing runs, nothing is written twice.
    before = {(r.code_hash, r.suite_kind): r.id for r in (out[i][k] for i in ids for k in ("public", "private"))}
    stats2: dict = {}
    again = execute_candidates(store, ids, sandbox=sb, stats=stats2)
    assert stats2["ran"] == 0 and stats2["cached"] == 8
    assert count_executions(store) == 8
    assert {(r.code_hash, r.suite_kind): r.id for r in (again[i][k] for i in ids for k in ("public", "private"))} \
        == before

    # A new candidate with known code on another rollout: served from the cache, its verdicts still recorded.
    [new] = add_candidates(store, pid, rid, [CODES["public_only"]], rollout=1)
    stats3: dict = {}
    execute_candidates(store, [new], sandbox=sb, stats=stats3)
    assert stats3["ran"] == 0 and verdicts(store, [new]) == {new: (True, False)}


def _zygote_of(sandbox: Sandbox) -> int:
    executor = sandbox._proc.pid
    for pid, (_, ppid) in process_table().items():
        if ppid == executor:
            return pid
    raise AssertionError("no zygote")


def test_sandbox_errors_are_retried_and_never_stored(sqlite_store):
    store = sqlite_store
    pid = add_problem(store, "mbpp/9002", public_tests=PUBLIC, private_tests=PRIVATE)
    ids = add_candidates(store, pid, add_round(store), [CODES["right"], CODES["wrong"]])
    broken = Sandbox(workers=1, limits=Limits(timeout_s=10)).start()
    try:
        os.kill(_zygote_of(broken), signal.SIGKILL)  # the infrastructure fails under the executor
        time.sleep(0.2)
        with pytest.raises(InfraError, match="sandbox failed"):
            execute_candidates(store, ids, sandbox=broken)
        assert count_executions(store) == 0
        assert verdicts(store, ids) == {ids[0]: (None, None), ids[1]: (None, None)}
        # The retry (the client starts a fresh executor) runs them and stores real verdicts.
        out = execute_candidates(store, ids, sandbox=broken)
    finally:
        broken.close()
    assert count_executions(store) == 4
    assert out[ids[0]]["private"].passed and not out[ids[1]]["private"].passed
    with pytest.raises(ValueError, match="never stored"):
        store.record_executions([{"code_hash": "x", "suite_hash": "y", "suite_kind": "public",
                                  "sandbox_version": SANDBOX_VERSION, "status": "sandbox_error", "passed": False}])


def test_celery_task_on_a_real_worker_is_idempotent_and_chains(pg_store):
    """The task through Redis to a real ``execute`` worker: delivered twice, it writes every execution once;
    ``then`` queues the next task (here another execute, as the collect pipeline chains sample -> execute)."""
    from tests.helpers.workers import celery_workers, redis_db

    store = pg_store
    pid = add_problem(store, "mbpp/9003", public_tests=PUBLIC, private_tests=PRIVATE)
    rid = add_round(store)
    first = add_candidates(store, pid, rid, [CODES["right"], CODES["wrong"], CODES["right"]])
    second = add_candidates(store, pid, rid, [CODES["public_only"]], rollout=1)
    url = store.engine.url.render_as_string(hide_password=False)
    with redis_db() as broker, celery_workers(url, broker) as workers:
        workers.start("execute")
        then = {"task": "mucode.execute", "kwargs": {"candidate_ids": second}}
        for _ in range(2):  # a redelivery: the same message twice
            workers.app.send_task("mucode.execute", kwargs={"candidate_ids": first, "then": then},
                                  queue="execute")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            v = verdicts(store, first + second)
            if all(x[0] is not None for x in v.values()):
                break
            time.sleep(0.5)
    assert verdicts(store, first + second) == {first[0]: (True, True), first[1]: (False, False),
                                               first[2]: (True, True), second[0]: (True, False)}
    assert count_executions(store) == 6  # 3 distinct codes x 2 suites, whatever the deliveries
