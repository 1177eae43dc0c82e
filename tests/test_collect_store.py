"""The collection's store queries (rollouts, jobs, experiments) and the Best-of-N selectors, on SQLite and
Postgres. The pipeline itself is tested in test_collect.py and test_collect_celery.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from app.db import models as m
from app.selection import SelectionError, needs_scores, selection_seed
from app.selection import select as pick
from app.store.rollouts import Owner
from tests.helpers.seed import add_model, add_problem, add_round


def _c(i, public=False, private=False, score=None):
    return SimpleNamespace(
        id=100 + i, sample_index=i, public_passed=public, private_passed=private, score=score
    )


# -- selectors ---------------------------------------------------------------------------------------------
def test_selectors_follow_the_reference_rules():
    cands = [
        _c(0, score=0.9),
        _c(1, public=True, score=0.1),
        _c(2, public=True, private=True, score=0.5),
        _c(3, score=2.0),
    ]
    assert pick("pt", cands).sample_index == 1  # first public-passing
    assert pick("pt", [_c(0), _c(1)]).sample_index == 0  # none passes: the first
    assert pick("lv", cands).sample_index == 3  # highest score, whatever the tests say
    assert pick("pt+lv", cands).sample_index == 2  # best-scored among public-passing
    assert pick("pt+lv", [_c(0, score=0.1), _c(1, score=0.7)]).sample_index == 1  # none passes: best overall
    assert pick("oracle", cands).sample_index == 2
    assert pick("first", list(reversed(cands))).sample_index == 0  # order is by sample index, not list order
    # ties go to the lowest index
    assert pick("lv", [_c(1, score=1.0), _c(0, score=1.0)]).sample_index == 0


def test_random_selector_is_seeded_and_covers_all_candidates():
    cands = [_c(i) for i in range(5)]
    seeds = [selection_seed(7, t) for t in range(1, 40)]
    first = [pick("random", cands, seed=s).sample_index for s in seeds]
    assert first == [pick("random", cands, seed=s).sample_index for s in seeds]
    assert set(first) == set(range(5))
    with pytest.raises(SelectionError):
        pick("random", cands)


def test_selector_errors():
    assert needs_scores("lv") and needs_scores("pt+lv") and not needs_scores("pt") and not needs_scores(None)
    with pytest.raises(SelectionError, match="no verifier score"):
        pick("lv", [_c(0), _c(1, score=1.0)])
    with pytest.raises(SelectionError, match="unknown selector"):
        pick("best", [_c(0)])


# -- rollouts ----------------------------------------------------------------------------------------------
def test_create_rollouts_is_idempotent_per_owner(store):
    p1, p2 = add_problem(store, "t/1"), add_problem(store, "t/2")
    gen = add_model(store, "gen")
    rid = add_round(store, generator_id=gen)
    ev = store.create_evaluation("ev", generator_id=gen, dataset="mbpp", split="test", mode="collect")
    rows = [
        {"problem_id": p, "sample_index": i, "seed": 10 * p + i, "generator_id": gen}
        for p in (p2, p1)
        for i in range(3)
    ]
    for owner in (Owner(round_id=rid), Owner(evaluation_id=ev)):
        assert store.create_rollouts(owner, rows) == 6
        assert store.create_rollouts(owner, rows) == 0
        ids = store.collection_rollouts(owner)
        assert len(ids) == 6 and all(st == "active" for _, st in ids)
    with store.session() as s:
        assert s.execute(select(func.count()).select_from(m.Rollout)).scalar_one() == 12
        # batch order is (problem, sample index), whatever the insert order
        order = s.execute(
            select(m.Rollout.problem_id, m.Rollout.sample_index)
            .where(m.Rollout.round_id == rid)
            .where(m.Rollout.id.in_([i for i, _ in store.collection_rollouts(Owner(round_id=rid))]))
        ).all()
    assert sorted(order) == [(p, i) for p in sorted((p1, p2)) for i in range(3)]


def _two_candidates_with_executions(store, tid: int, pid: int) -> int:
    """Candidates 0 (fails) and 1 (passes public) of turn ``tid``, their executions under a decoy suite hash,
    under the problem's public suite hash and as a sandbox error of another version; returns a verifier's id."""
    with store.session() as s:
        for i, (pub, priv) in enumerate([(False, False), (True, False)]):
            s.add(m.Candidate(turn_id=tid, sample_index=i, response=f"r{i}", code=f"c{i}", code_hash=f"h{i}",
                              chosen=False, public_passed=pub, private_passed=priv))
            s.add(m.Execution(code_hash=f"h{i}", suite_hash="x", suite_kind="public", sandbox_version="v",
                              status="passed" if pub else "failed", passed=pub, feedback=f"fb{i}"))
        # the public feedback joins on the problem's public suite hash
        p = s.get(m.Problem, pid)
        for i in range(2):
            s.add(m.Execution(code_hash=f"h{i}", suite_hash=p.public_suite_hash, suite_kind="public",
                              sandbox_version="v", status="passed" if i else "failed", passed=bool(i),
                              feedback=f"real{i}"))
            s.add(m.Execution(code_hash=f"h{i}", suite_hash=p.public_suite_hash, suite_kind="public",
                              sandbox_version="v0", status="sandbox_error", passed=False, feedback="infra"))
        ver = m.ModelVersion(name="ver", kind="verifier", base_model="tiny", uri="tiny")
        s.add(ver)
        s.flush()
        return ver.id


def test_turns_candidates_and_advance(store):
    pid = add_problem(store, "t/1")
    gen = add_model(store, "gen")
    ev = store.create_evaluation("ev", generator_id=gen, dataset="mbpp", split="test", mode="bon")
    owner = Owner(evaluation_id=ev)
    store.create_rollouts(owner, [{"problem_id": pid, "sample_index": 0, "seed": 1, "generator_id": gen}])
    ((rid, _),) = store.collection_rollouts(owner)
    [state] = store.batch_state([rid])
    assert state.last_turn is None and state.num_turns == 0
    msgs = [{"role": "user", "content": "q"}]
    store.open_turns([{"rollout_id": rid, "index": 1, "messages": msgs}])
    store.open_turns([{"rollout_id": rid, "index": 1, "messages": [{"role": "user", "content": "other"}]}])
    [state] = store.batch_state([rid])
    assert state.num_turns == 1 and state.last_turn.messages == msgs and state.last_turn.candidates == []
    tid = state.last_turn.id
    vid = _two_candidates_with_executions(store, tid, pid)
    [state] = store.batch_state([rid], verifier_id=vid)
    cids = [c.id for c in state.last_turn.candidates]
    assert [c.sample_index for c in state.last_turn.candidates] == [0, 1]
    assert all(c.executed and c.score is None for c in state.last_turn.candidates)
    store.add_verifier_scores(vid, [(cids[0], 0.5), (cids[1], -1.0)])
    [state] = store.batch_state([rid], verifier_id=vid)
    assert [c.score for c in state.last_turn.candidates] == [0.5, -1.0]
    fb = store.public_feedback(cids)
    assert fb == {
        cids[0]: {"status": "failed", "feedback": "real0"},
        cids[1]: {"status": "passed", "feedback": "real1"},
    }

    next_msgs = msgs + [{"role": "assistant", "content": "r1"}, {"role": "user", "content": "Feedback: x"}]
    for _ in range(2):  # applying the same decisions twice changes nothing
        store.advance_batch(
            chosen={tid: cids[1]},
            feedback={tid: "x"},
            open_turns=[{"rollout_id": rid, "index": 2, "messages": next_msgs}],
        )
    [state] = store.batch_state([rid])
    assert state.num_turns == 2 and state.last_turn.index == 2 and state.last_turn.messages == next_msgs
    with store.session() as s:
        chosen = dict(
            s.execute(
                select(m.Candidate.sample_index, m.Candidate.chosen).where(m.Candidate.turn_id == tid)
            ).all()
        )
        assert chosen == {0: False, 1: True}
        assert s.get(m.Turn, tid).feedback == "x"
    store.advance_batch(finish=[{"rollout_id": rid, "final_label": False, "public_passed": True}])
    [state] = store.batch_state([rid])
    assert state.status == "done"
    counts = store.collection_counts(owner)
    assert counts["rollouts"] == 1 and counts["active"] == 0 and counts["public_passed"] == 1
    assert counts["turns"] == 2 and counts["candidates"] == 2 and counts["executed"] == 2
    assert counts["done_by_turns"] == {2: 1}
    samples = store.collection_samples(owner)
    assert [(x["index"], len(x["completion_tokens"])) for x in samples] == [(1, 2)]


# -- jobs ---------------------------------------------------------------------------------------------------
def test_jobs_lifecycle(store):
    gen = add_model(store, "gen")
    ev = store.create_evaluation("ev", generator_id=gen, dataset="mbpp", split="test", mode="collect")
    assert store.record_job("k/1", "sample", "sample", {"a": 1}, evaluation_id=ev) is True
    assert store.record_job("k/1", "sample", "sample", {"a": 1}, evaluation_id=ev) is False
    assert store.job_started("k/1", worker="w") == 1
    assert store.record_job("k/1", "sample", "sample") is False  # running: left alone
    assert store.get_job("k/1").state == "running"
    assert store.job_started("k/1", worker="w2") == 2  # a redelivery
    store.job_done("k/1", {"n": 3})
    j = store.get_job("k/1")
    assert (j.state, j.attempts, j.result, j.worker) == ("done", 2, {"n": 3}, "w2")
    assert j.started_at is not None and j.finished_at is not None
    # a job that starts without having been recorded (e.g. queued by another system)
    assert store.job_started("k/2", kind="execute", queue="execute", evaluation_id=ev) == 1
    store.job_failed("k/2", "boom")
    assert store.get_job("k/2").error == "boom"
    assert [j.key for j in store.unfinished_jobs(evaluation_id=ev)] == ["k/2"]
    assert store.job_counts(evaluation_id=ev) == {"sample": {"done": 1}, "execute": {"failed": 1}}
    assert store.claim_job("k/2", from_states=("failed",), to_state="done") is True
    assert store.claim_job("k/2", from_states=("failed",), to_state="done") is False
    store.record_job("k/3", "collect", "control")
    assert store.bump_job_attempts("k/3") == 1 and store.bump_job_attempts("k/3") == 2
    assert [j.key for j in store.list_jobs(key_prefix="k/")] == ["k/1", "k/2", "k/3"]


# -- experiments ------------------------------------------------------------------------------------------
def test_experiments_minimal_api(store):
    g1 = store.ensure_model_version("tiny", "generator", "tiny", "/models/tiny")
    assert store.ensure_model_version("tiny", "generator", "other", "/elsewhere") == g1
    assert store.get_model_version(g1).uri == "/models/tiny" and store.get_model_version("tiny").id == g1
    exp = store.create_experiment("e", "mucode", "tiny", {"x": 1})
    assert store.create_experiment("e", "mucode", "tiny", {"x": 2}) == exp
    assert store.get_experiment("e").config == {"x": 1}
    r0 = store.create_round(exp, 0, generator_id=g1)
    assert store.create_round(exp, 0) == r0 and store.get_round(r0).generator_id == g1
    ev = store.create_evaluation(
        "c", generator_id=g1, dataset="mbpp", split="train", mode="collect", num_chains=4
    )
    assert store.get_evaluation("c").num_chains == 4 and store.find_evaluation("nope") is None
    store.set_evaluation_status(ev, "done", finished=True)
    e = store.get_evaluation(ev)
    assert e.status == "done" and e.finished_at is not None
    with pytest.raises(ValueError):
        store.create_evaluation("bad", generator_id=g1, dataset="mbpp", split=None, mode="nope")
