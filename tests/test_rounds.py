"""The round state machine (app/rounds.py): pure decisions, then whole rounds in embedded mode (SQLite, jobs
in-process) through the CLI with a tiny model that knows some answers -- including a failed step that
``round resume`` retries without redoing the finished ones."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app import rounds as R
from app.db import models as m
from app.protocol import ExperimentConfig
from tests.helpers.cli import run_mucode


def facts(index=0, method="mucode", steps=None, **kw):
    cfg = ExperimentConfig(method=method, base_model="base", **kw.pop("config", {}))
    defaults = {"round_id": 10 + index, "experiment": "exp", "experiment_id": 1, "index": index, "config": cfg,
                "base_model": "base", "generator_id": 100, "round_ids_upto": tuple(range(10, 11 + index))}
    defaults.update(kw)
    return R.RoundFacts(steps=steps or {}, **defaults)


def done(*names, state="done"):
    return {n: {"state": state, "attempt": 1} for n in names}


# -- pure decisions ---------------------------------------------------------------------------------------
def test_round_zero_walks_the_steps_in_order():
    f = facts()
    assert R.next_action(f) == R.Action("start", "collect")
    f = facts(steps=done("collect"))
    a = R.next_action(f)
    assert (a.kind, a.step) == ("skip", "score_old") and "round 0" in a.reason
    f = facts(steps={**done("collect"), "score_old": {"state": "skipped"}})
    assert R.next_action(f) == R.Action("start", "train_verifier")
    f = facts(steps={**done("collect", "train_verifier"), "score_old": {"state": "skipped"}})
    assert R.next_action(f) == R.Action("start", "score_new")
    f = facts(steps={**done("collect", "train_verifier", "score_new", "relabel"), "score_old": {"state": "skipped"}})
    assert R.next_action(f) == R.Action("start", "train_generator")
    f = facts(steps={**done(*R.STEPS[:-1]), "evaluate": {"state": "running", "attempt": 1}})
    assert R.next_action(f) == R.Action("check", "evaluate")
    f = facts(steps=done(*R.STEPS))
    assert R.next_action(f) == R.Action("finish")


def test_a_failed_step_blocks_and_resume_retries_only_it():
    steps = {**done("collect"), "score_old": {"state": "skipped"},
             "train_verifier": {"state": "failed", "attempt": 2, "error": "ValueError: boom"}}
    f = facts(steps=steps)
    assert R.next_action(f) == R.Action("blocked", "train_verifier", "ValueError: boom")
    assert R.resume_plan(f) == ("train_verifier", "retry")
    # a step left running by a killed worker is retried too; a pending one is simply started
    assert R.resume_plan(facts(steps={"collect": {"state": "running", "attempt": 1}})) == ("collect", "retry")
    assert R.resume_plan(facts()) == ("collect", "start")
    assert R.resume_plan(facts(steps=done(*R.STEPS))) is None


def test_skips_per_method():
    later = {"index": 1, "verifier_in_id": 7}
    assert R.skip_reason("score_old", facts(**later)) is None
    assert R.skip_reason("score_new", facts(**later)) is None
    for method in ("multi_rft", "rft"):
        assert "without verifier scores" in R.skip_reason("score_old", facts(method=method, **later))
        assert "without verifier scores" in R.skip_reason("score_new", facts(method=method, **later))
        assert R.skip_reason("train_verifier", facts(method=method, **later)) is None  # still trained, for BoN
    assert R.skip_reason("score_new", facts(method="rft_lv", **later)) is None
    oracle = facts(config={"relabel": {"expert": "oracle"}}, **later)
    assert "oracle" in R.skip_reason("score_new", oracle)
    assert R.skip_reason("evaluate", facts(config={"eval": {"datasets": []}})) is not None
    shown = dict(R.progress(facts(method="multi_rft")))
    assert shown["score_old"] == shown["score_new"] == "skipped" and shown["collect"] == "pending"


def test_models_follow_the_paper_schedule():
    # G_k = G_{k-1}'s output (the base model at k = 0); RM_{k-1} comes in, RM_k and G_{k+1} come out
    assert R.plan_next_round([], 5) == {"index": 0, "generator_id": 5, "verifier_in_id": None}
    prior = [R.PriorRound(0, "done", generator_out_id=21, verifier_out_id=31)]
    assert R.plan_next_round(prior, 5) == {"index": 1, "generator_id": 21, "verifier_in_id": 31}
    with pytest.raises(ValueError, match="resume"):
        R.plan_next_round([R.PriorRound(0, "failed", None, None)], 5)
    # RM_k from the base model on the pairs of rounds 0..k
    f = facts(index=2, round_ids_upto=(10, 11, 12), round_id=12)
    inp = R.verifier_inputs(f)
    assert inp["round_ids"] == [10, 11, 12] and inp["base_model"] == "base" and inp["round_id"] == 12
    assert inp["name"] == "exp-r2-verifier-bt"
    assert R.score_inputs("score_old", facts(index=1, verifier_in_id=7, verifier_out_id=8)) == 7
    assert R.score_inputs("score_new", facts(index=1, verifier_in_id=7, verifier_out_id=8)) == 8
    # collect with G_k, the protocol's sampling, a new seed every round
    c0, c1 = R.collect_inputs(facts()), R.collect_inputs(facts(index=1, generator_id=21))
    assert c1["generator_id"] == 21 and c0["spec"]["seed"] != c1["spec"]["seed"]
    assert c0["spec"]["samples_per_problem"] == 15 and c0["spec"]["turns"] == 3
    assert c0["spec"]["temperature"] == 0.7 and c0["spec"]["max_new_tokens"] == 1000
    assert c0["spec"]["stop_after_code"] is False  # the paper: full responses
    stop = facts(config={"rollout": {"sampling": {"stop_after_code": True}}}, generator_out_id=21, verifier_out_id=31)
    assert R.collect_inputs(stop)["spec"]["stop_after_code"] is True
    assert all(s.collect_spec()["stop_after_code"] for s in R.eval_plan(stop))  # evaluation samples the same way


LEGACY = {"eval": {"verifier_pairing": "previous_round"}}


def test_eval_plan_greedy_and_bon_for_each_generator():
    f = facts(generator_out_id=21, verifier_out_id=31,
              config={"eval": {"datasets": ["mbpp:test", "humaneval"], "selectors": ["random", "pt+lv"]}})
    specs = R.eval_plan(f)
    names = [s.name for s in specs]
    # round 0 evaluates the base model G0 with RM0, the verifier trained on G0's rollouts (not G1: it has no
    # verifier trained on its samples yet; round 1 evaluates it)
    assert names == [
        "exp/r0/G0/mbpp-test/greedy", "exp/r0/G0/mbpp-test/bon-random-N5-C10", "exp/r0/G0/mbpp-test/bon-pt+lv-N5-C10",
        "exp/r0/G0/humaneval/greedy", "exp/r0/G0/humaneval/bon-random-N5-C10", "exp/r0/G0/humaneval/bon-pt+lv-N5-C10",
    ]
    assert all(s.generator_id == 100 and s.verifier_id == 31 for s in specs)
    greedy = specs[0]
    assert (greedy.temperature, greedy.candidates, greedy.chains, greedy.selector) == (0.0, 1, 1, "first")
    bon = specs[2].collect_spec()
    assert bon["candidates"] == 5 and bon["samples_per_problem"] == 10 and bon["verifier_id"] == 31
    assert bon["temperature"] == 0.7 and bon["selector"] == "pt+lv" and bon["stop_rule"] == "public"
    assert specs[1].collect_spec()["verifier_id"] is None  # random needs no scores
    with pytest.raises(ValueError, match="needs a verifier"):
        R.eval_specs(f.config, name_prefix="x", generator_label="G", generator_id=1, verifier_id=None)


def test_each_generator_is_searched_with_the_verifier_trained_on_its_rollouts():
    # round k (collects with G_k, trains RM_k on rounds 0..k) evaluates G_k with RM_k; G_{k+1} waits for round k+1
    r1 = facts(index=1, generator_id=21, verifier_in_id=31, verifier_out_id=32, generator_out_id=22)
    specs = R.eval_plan(r1)
    assert specs and all("/r1/G1/" in s.name and s.generator_id == 21 and s.verifier_id == 32 for s in specs)
    assert R.eval_generators(r1) == [(1, "in")]
    # it needs no trained generator: the evaluation does not depend on G_{k+1}
    assert R.eval_plan(facts(index=1, generator_id=21, verifier_out_id=32)) == specs
    # without the baseline, round 0 has nothing to evaluate: the step is skipped, with the reason
    nobase = facts(config={"eval": {"baseline": False}}, verifier_out_id=31)
    assert R.eval_plan(nobase) == [] and "baseline" in R.skip_reason("evaluate", nobase)
    assert R.skip_reason("evaluate", facts(verifier_out_id=31)) is None
    assert dict(R.progress(nobase))["evaluate"] == "skipped"


def test_previous_round_pairing_keeps_the_old_pairs():
    """Experiments stored before the setting read it as previous_round: G_{k+1} with RM_k (and G0 at k=0)."""
    legacy = ExperimentConfig.frozen({"base_model": "base", "eval": {"datasets": ["mbpp:test"], "selectors": ["lv"]}})
    assert legacy.eval.verifier_pairing == "previous_round"
    f0 = facts(config=legacy.model_dump(exclude={"base_model", "method"}), generator_out_id=21, verifier_out_id=31)
    assert [(s.name, s.generator_id, s.verifier_id) for s in R.eval_plan(f0)] == [
        ("exp/r0/G0/mbpp-test/greedy", 100, 31), ("exp/r0/G0/mbpp-test/bon-lv-N5-C10", 100, 31),
        ("exp/r0/G1/mbpp-test/greedy", 21, 31), ("exp/r0/G1/mbpp-test/bon-lv-N5-C10", 21, 31)]
    f1 = facts(index=1, config=LEGACY, generator_id=21, verifier_in_id=31, verifier_out_id=32, generator_out_id=22)
    assert {(s.name.split("/")[2], s.generator_id, s.verifier_id) for s in R.eval_plan(f1)} == {("G2", 22, 32)}
    with pytest.raises(ValueError, match="no trained generator"):
        R.eval_plan(facts(index=1, config=LEGACY, generator_id=21, verifier_out_id=32))
    assert R.eval_generators(facts(config={"eval": {"verifier_pairing": "previous_round", "baseline": False}})) == [
        (1, "out")]


def test_a_final_round_evaluates_its_generator_and_trains_none():
    for config in ({}, LEGACY):  # whatever the pairing: the last generator with the last verifier
        f = facts(index=2, config=config, final=True, generator_id=22, verifier_in_id=31, verifier_out_id=32)
        specs = R.eval_plan(f)
        assert specs and all("/r2/G2/" in s.name and (s.generator_id, s.verifier_id) == (22, 32) for s in specs)
        shown = dict(R.progress(f))
        assert [st for st, state in shown.items() if state == "skipped"] == [
            "score_old", "score_new", "relabel", "train_generator"]
        assert "final round" in R.skip_reason("train_generator", f)
    # the steps run in order: collect, train_verifier, evaluate
    f = facts(index=2, final=True, generator_id=22, verifier_in_id=31)
    assert R.next_action(f) == R.Action("start", "collect")
    f = facts(index=2, final=True, generator_id=22, verifier_in_id=31, steps=done("collect"))
    assert R.next_action(f).kind == "skip" and R.next_action(f).step == "score_old"
    skipped = {n: {"state": "skipped"} for n in ("score_old", "score_new", "relabel", "train_generator")}
    f = facts(index=2, final=True, steps={**done("collect"), "score_old": {"state": "skipped"}})
    assert R.next_action(f) == R.Action("start", "train_verifier")
    f = facts(index=2, final=True, steps={**done("collect", "train_verifier"), **skipped})
    assert R.next_action(f) == R.Action("start", "evaluate")
    # no round follows a final one; a final round that failed is resumed first
    prior = [R.PriorRound(0, "done", 21, 31), R.PriorRound(1, "done", None, 32, final=True)]
    with pytest.raises(ValueError, match="final round"):
        R.plan_next_round(prior, 5)
    with pytest.raises(ValueError, match="resume"):
        R.plan_next_round([R.PriorRound(0, "failed", None, None, final=True)], 5)


def test_config_defaults_are_the_paper_protocol():
    c = ExperimentConfig(base_model="m")
    assert (c.rollout.turns, c.rollout.rollouts_per_problem, c.rollout.sampling.temperature) == (3, 15, 0.7)
    assert (c.eval.bon_candidates, c.eval.bon_chains, c.eval.turns) == (5, 10, 3)
    assert c.eval.max_new_tokens is None and c.eval.baseline and c.trainer_overrides == {}
    assert c.generator.from_base_each_round and c.relabel.aggregate_rounds
    with pytest.raises(ValueError):
        ExperimentConfig(base_model="m", trainer_overrides={"sampler": {}})


# -- whole rounds in embedded mode -------------------------------------------------------------------------
P_TRAIN, P_TEST, M, T, N = 3, 3, 4, 2, 3


def _mucode(args, env, *, ok=True, timeout=1500):
    return run_mucode(args, env, ok=ok, timeout=timeout)


def small_config(model: str, **extra) -> dict:
    cfg = {
        "base_model": str(model),
        "train_limit": P_TRAIN,
        "rollout": {"turns": T, "rollouts_per_problem": M, "batch_size": 6,
                    "sampling": {"temperature": 0.7, "max_new_tokens": 256}},
        "verifier": {"pairs_per_problem": 4, "effective_batch_size": 4, "per_device_batch_size": 4},
        "generator": {"effective_batch_size": 4, "per_device_batch_size": 4},
        "eval": {"datasets": ["mbpp:test"], "limit": P_TEST, "turns": T, "bon_candidates": N, "bon_chains": 2,
                 "selectors": ["pt+lv"], "max_new_tokens": 256},
        "trainer_overrides": {"verifier": {"max_steps": 2, "evaluate": False},
                              "generator": {"max_steps": 2, "gradient_checkpointing": False}},
    }
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def knowing_model() -> str:
    from tests.helpers.rounds import knowing_model_path

    return str(knowing_model_path(P_TRAIN, P_TEST))


def _env(tmp_path: Path, db: str) -> dict[str, str]:
    return {"MUCODE_DATABASE_URL": db, "MUCODE_BROKER_URL": "", "MUCODE_ARTIFACTS_DIR": str(tmp_path / "art"),
            "MUCODE_ALLOW_WEAK_ISOLATION": os.environ.get("MUCODE_ALLOW_WEAK_ISOLATION", "false"), "COLUMNS": "200"}


def _mbpp_store(tmp_path: Path, file: str) -> tuple[str, dict[str, str]]:
    """(URL, environment) of a migrated embedded store in ``tmp_path`` with MBPP loaded, through the CLI."""
    db = f"sqlite:///{tmp_path / file}"
    env = _env(tmp_path, db)
    _mucode(["db", "upgrade"], env)
    _mucode(["data", "load", "mbpp"], env)
    return db, env


def check_round_rows(store, experiment: str, *, problems=P_TRAIN, rollouts=M, turns=T, eval_problems=P_TEST,
                     chains=2, candidates=N) -> dict:
    """Every stored number of a finished round 0 is there and consistent (shared with the Celery tests)."""
    exp = store.get_experiment(experiment)
    (rnd,) = store.experiment_rounds(exp.id)
    assert rnd.status == "done", rnd.steps
    assert {k: v["state"] for k, v in rnd.steps.items()} == {
        "collect": "done", "score_old": "skipped", "train_verifier": "done", "score_new": "done",
        "relabel": "done", "train_generator": "done", "evaluate": "done"}
    assert rnd.verifier_out_id and rnd.generator_out_id and rnd.generator_id and rnd.started_at and rnd.finished_at
    with store.session() as s:
        ro = s.execute(select(m.Rollout).where(m.Rollout.round_id == rnd.id)).scalars().all()
        assert len(ro) == problems * rollouts and all(r.status == "done" for r in ro)
        assert len({(r.problem_id, r.sample_index) for r in ro}) == problems * rollouts
        n_turns = sum(r.num_turns for r in ro)
        cands = s.execute(
            select(func.count()).select_from(m.Candidate).join(m.Turn).join(m.Rollout)
            .where(m.Rollout.round_id == rnd.id)).scalar_one()
        assert cands == n_turns  # one candidate per training turn
        scored = s.execute(select(func.count()).select_from(m.VerifierScore)
                           .where(m.VerifierScore.verifier_id == rnd.verifier_out_id)).scalar_one()
        assert scored >= cands
        n_sft = s.execute(select(func.count()).select_from(m.SftExample).join(m.TrainingSet)
                          .where(m.TrainingSet.round_id == rnd.id)).scalar_one()
        assert n_sft > 0
        gen = s.get(m.ModelVersion, rnd.generator_out_id)
        assert gen.kind == "generator" and Path(gen.uri).is_dir()
        ver = s.get(m.ModelVersion, rnd.verifier_out_id)
        assert ver.kind == "verifier" and ver.name == f"{experiment}-r0-verifier-bt"
    evs = store.round_evaluations(rnd.id)
    # round 0 evaluates the base model G0 with RM0, the verifier trained on G0's own rollouts
    assert sorted(e.name.split("/", 2)[2] for e in evs) == sorted(
        f"G0/mbpp-test/{mode}" for mode in ("greedy", f"bon-pt+lv-N{candidates}-C{chains}"))
    assert {(p["generator"], p["verifier"]) for p in store.evaluation_pairs([e.id for e in evs]).values()} == {
        ("G0", "RM0")}
    for e in evs:
        assert e.status == "done" and e.metrics["problems"] == eval_problems
        n_chains = 1 if e.mode == "greedy" else chains
        assert e.metrics["chains"] == eval_problems * n_chains
        assert len(e.metrics["per_turn"]) == turns
        with store.session() as s:
            chains_rows = s.execute(select(m.Rollout).where(m.Rollout.evaluation_id == e.id)).scalars().all()
            executed = sum(r.num_turns for r in chains_rows)
            n_cands = s.execute(select(func.count()).select_from(m.Candidate).join(m.Turn).join(m.Rollout)
                                .where(m.Rollout.evaluation_id == e.id)).scalar_one()
        assert len(chains_rows) == eval_problems * n_chains
        assert n_cands == executed * (1 if e.mode == "greedy" else candidates)
        assert len(store.evaluation_results(e.id)) == executed == e.metrics["results"]
        assert e.generator_id == rnd.generator_id and e.verifier_id == rnd.verifier_out_id
    return {"round": rnd, "evaluations": evs, "rollouts": len(ro), "candidates": cands}


def _create_is_frozen_and_checked(tmp_path, env, knowing_model) -> None:
    """Creating the same experiment again is fine, another config under its name is not, a bad one neither."""
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(small_config(knowing_model)))
    r = _mucode(["experiment", "create", "e1", "--method", "mucode", "--config", str(cfg_file)], env)
    assert "created" in r.stdout
    # the same again is fine; another config under the same name is not (configs are frozen)
    _mucode(["experiment", "create", "e1", "--config", str(cfg_file)], env)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(small_config(knowing_model, train_limit=2)))
    r = _mucode(["experiment", "create", "e1", "--config", str(other)], env, ok=False)
    assert r.returncode == 2 and "another config" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**small_config(knowing_model), "trainer_overrides": {"sampler": {}}}))
    r = _mucode(["experiment", "create", "e2", "--config", str(bad)], env, ok=False)
    said = " ".join(r.stderr.split())  # the console may wrap the line
    assert r.returncode == 2 and "invalid experiment config" in said
    assert "trainer_overrides keys are 'verifier' and 'generator', not ['sampler']" in said


def _fail_then_resume_round_0(tmp_path, env, store) -> Any:
    # a real failure: no trained model can be written (a file where the models folder should be)
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "models").write_text("not a folder")
    r = _mucode(["round", "run", "e1"], env, ok=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "round failed" in r.stdout and "mucode round resume e1" in r.stdout
    (rnd,) = store.experiment_rounds(store.get_experiment("e1").id)
    assert rnd.status == "failed"
    assert rnd.steps["collect"]["state"] == "done" and rnd.steps["train_verifier"]["state"] == "failed"
    assert rnd.steps["train_verifier"]["error"]
    st = json.loads(_mucode(["round", "status", "e1", "--json"], env).stdout)
    assert st["status"] == "failed" and st["failed_step"] == "train_verifier"
    assert any(j["key"].startswith(f"round/{rnd.id}/train_verifier/a1") for j in st["failed_jobs"])
    with store.session() as s:
        before = s.execute(select(func.count()).select_from(m.Candidate)).scalar_one()
    # a new round is refused while this one is unfinished
    r = _mucode(["round", "run", "e1"], env, ok=False)
    assert r.returncode == 2 and "resume" in r.stderr

    (tmp_path / "art" / "models").unlink()
    r = _mucode(["round", "resume", "e1"], env)
    assert "G0" in r.stdout and "turn 1" in r.stdout  # the tables were printed
    assert "G0 with RM0" in r.stdout and "G0 searched with RM0" in r.stdout  # which pair was evaluated
    res = check_round_rows(store, "e1")
    rnd = res["round"]
    assert rnd.steps["collect"]["attempt"] == 1  # finished steps were not redone
    assert rnd.steps["train_verifier"]["attempt"] == 2
    with store.session() as s:
        training = s.execute(select(func.count()).select_from(m.Candidate).join(m.Turn).join(m.Rollout)
                             .where(m.Rollout.round_id == rnd.id)).scalar_one()
        assert training == res["candidates"]
        assert s.execute(select(func.count()).select_from(m.Candidate)).scalar_one() > before  # eval chains
    jobs = {j.key: j.state for j in store.list_jobs(round_id=rnd.id) if j.key.startswith("round/")}
    assert jobs[f"round/{rnd.id}/train_verifier/a1"] == "failed"
    assert jobs[f"round/{rnd.id}/train_verifier/a2"] == "done"
    assert jobs[f"round/{rnd.id}/train_generator/a1"] == "done"
    # status and show print every step with its timing; resume of a finished round does nothing
    st = json.loads(_mucode(["round", "status", "e1", "--json"], env).stdout)
    assert st["status"] == "done" and all(s["seconds"] is not None for s in st["steps"] if s["state"] == "done")
    r = _mucode(["experiment", "show", "e1"], env)
    assert "mbpp:test" in r.stdout and "BoN N=3 C=2 pt+lv" in r.stdout
    r = _mucode(["round", "resume", "e1", "--json"], env)
    assert json.loads(r.stdout)["status"] == "done"
    return rnd


def _round_1_follows_the_schedule(env, store, r0, knowing_model) -> Any:
    # round 1 follows the paper's schedule: G1 collects, RM0 scores its samples, RM1 is trained from the base
    # model on the pairs of rounds 0 and 1, the relabeled union of both rounds trains G2 from the base model
    r = _mucode(["round", "run", "e1", "--json"], env)
    st1 = json.loads(r.stdout)
    assert st1["status"] == "done" and st1["index"] == 1, st1
    (_, r1) = store.experiment_rounds(store.get_experiment("e1").id)
    assert r1.generator_id == r0.generator_out_id and r1.verifier_in_id == r0.verifier_out_id
    assert r1.steps["score_old"]["state"] == "done"
    assert r1.steps["score_old"]["result"]["verifier_id"] == r0.verifier_out_id
    with store.session() as s:
        v1 = s.get(m.ModelVersion, r1.verifier_out_id)
        assert v1.name == "e1-r1-verifier-bt" and v1.base_model == knowing_model
        ts_v = s.get(m.TrainingSet, v1.training_set_id)
        assert ts_v.config["round_ids"] == [r0.id, r1.id]
        g2 = s.get(m.ModelVersion, r1.generator_out_id)
        assert g2.config["init_from"] == knowing_model  # from the base model, not from G1
        sft_rounds = {rid for (rid,) in s.execute(
            select(m.Rollout.round_id).join(m.SftExample, m.SftExample.rollout_id == m.Rollout.id)
            .where(m.SftExample.training_set_id == g2.training_set_id).distinct())}
        assert sft_rounds == {r0.id, r1.id}
        # round 0's relabels keep round 0's verifier; round 1's use RM1
        by_round = dict(s.execute(
            select(m.Rollout.round_id, func.min(m.SftExample.verifier_id)).join(m.SftExample,
            m.SftExample.rollout_id == m.Rollout.id).where(m.SftExample.training_set_id == g2.training_set_id,
            m.SftExample.source == "relabeled").group_by(m.Rollout.round_id)).all())
        assert by_round.get(r0.id) in (None, r0.verifier_out_id) and by_round.get(r1.id) in (None, r1.verifier_out_id)
        # round 1's candidates were scored by RM0 (score_old) and by RM1 (score_new)
        for vid in (r0.verifier_out_id, r1.verifier_out_id):
            assert store.round_scored_count(r1.id, vid) == store.round_candidate_count(r1.id)
    # round 1 evaluates G1 with RM1, trained on pairs that include G1's own rollouts (not G2: round 2 does)
    evs1 = store.round_evaluations(r1.id)
    assert sorted(e.name.split("/", 2)[2] for e in evs1) == ["G1/mbpp-test/bon-pt+lv-N3-C2", "G1/mbpp-test/greedy"]
    assert {(e.generator_id, e.verifier_id) for e in evs1} == {(r1.generator_id, r1.verifier_out_id)}
    assert {(e["generator"], e["verifier"]) for e in st1["evaluations"]} == {("G1", "RM1")}
    with store.session() as s:
        pairs = s.execute(select(m.VerifierPair.chosen_candidate_id, m.VerifierPair.rejected_candidate_id)
                          .where(m.VerifierPair.training_set_id == ts_v.id)).all()
        cand_round = dict(s.execute(
            select(m.Candidate.id, m.Rollout.round_id).select_from(m.Candidate)
            .join(m.Turn, m.Turn.id == m.Candidate.turn_id).join(m.Rollout, m.Rollout.id == m.Turn.rollout_id)
            .where(m.Rollout.round_id.in_([r0.id, r1.id]))).all())
    # RM1's pairs: 4 per mixed problem from each round's own rollouts, so some come from G1's samples
    assert all(cand_round[c] == cand_round[r] for c, r in pairs)
    assert {cand_round[c] for c, _ in pairs} == {r0.id, r1.id}
    return r1


def _final_round_trains_no_generator(env, store, r0, r1) -> None:
    # the final round: G2 collects, RM2 is trained on rounds 0-2, G2 is evaluated with RM2; no generator
    r = _mucode(["round", "run", "e1", "--final", "--json"], env)
    st2 = json.loads(r.stdout)
    assert st2["status"] == "done" and st2["index"] == 2 and st2["final"], st2
    r2 = store.experiment_rounds(store.get_experiment("e1").id)[2]
    assert r2.final and r2.generator_id == r1.generator_out_id and r2.verifier_out_id
    assert r2.generator_out_id is None
    assert {k: v["state"] for k, v in r2.steps.items()} == {
        "collect": "done", "score_old": "skipped", "train_verifier": "done", "score_new": "skipped",
        "relabel": "skipped", "train_generator": "skipped", "evaluate": "done"}
    with store.session() as s:
        assert s.execute(select(func.count()).select_from(m.TrainingSet).where(
            m.TrainingSet.round_id == r2.id, m.TrainingSet.kind.notin_(("bt", "bce")))).scalar_one() == 0
        assert s.get(m.TrainingSet, s.get(m.ModelVersion, r2.verifier_out_id).training_set_id).config[
            "round_ids"] == [r0.id, r1.id, r2.id]
    evs2 = store.round_evaluations(r2.id)
    assert sorted(e.name.split("/", 2)[2] for e in evs2) == ["G2/mbpp-test/bon-pt+lv-N3-C2", "G2/mbpp-test/greedy"]
    assert {(e.generator_id, e.verifier_id) for e in evs2} == {(r2.generator_id, r2.verifier_out_id)}
    assert {(e["generator"], e["verifier"]) for e in st2["evaluations"]} == {("G2", "RM2")}
    # nothing follows a final round
    r = _mucode(["round", "run", "e1"], env, ok=False)
    assert r.returncode == 2 and "final round" in r.stderr
    r = _mucode(["round", "status", "e1"], env)
    assert "final round 2" in r.stdout and "G2 with RM2" in r.stdout


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_embedded_round_with_a_failed_step_and_resume(tmp_path, knowing_model):
    from app.store import Store

    db, env = _mbpp_store(tmp_path, "m.db")
    _create_is_frozen_and_checked(tmp_path, env, knowing_model)
    store = Store(db)
    r0 = _fail_then_resume_round_0(tmp_path, env, store)
    r1 = _round_1_follows_the_schedule(env, store, r0, knowing_model)
    _final_round_trains_no_generator(env, store, r0, r1)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_standalone_eval_with_every_selector(tmp_path, knowing_model):
    """``mucode eval`` on a model: greedy + BoN with random, lv, pt, pt+lv; rerunning prints the same."""
    from app.store import Store

    db, env = _mbpp_store(tmp_path, "e.db")
    # lv and pt+lv need a verifier: without one it is a clear error before anything is queued
    r = _mucode(["eval", "--model", knowing_model, "-d", "mbpp:test", "--limit", "2", "-s", "lv"], env, ok=False)
    assert r.returncode == 2 and "verifier" in r.stderr
    args = ["eval", "--model", knowing_model, "-d", "mbpp:test", "--limit", "2", "-T", "2", "-N", "2", "-C", "2",
            "-s", "random", "-s", "pt", "--max-new-tokens", "256", "--batch-size", "4"]
    r = _mucode(args, env)
    assert "BoN N=2 C=2 random" in r.stdout and "BoN N=2 C=2 pt" in r.stdout and "greedy" in r.stdout
    store = Store(db)
    evs = list(store.list_jobs(kinds=("collect",)))
    assert len(evs) == 3
    r2 = _mucode([*args, "--json"], env)
    data = json.loads(r2.stdout)
    assert [d["status"] for d in data] == ["done"] * 3
    for d in data:
        assert d["metrics"]["problems"] == 2 and len(d["metrics"]["per_turn"]) == 2
        assert len(store.evaluation_results(d["id"])) == d["metrics"]["results"]


def test_a_step_record_reads_defaults_for_what_is_missing_and_drops_what_it_does_not_know():
    assert R.StepRecord.of(None) == R.StepRecord(state="pending", attempt=0, result={})
    rec = R.StepRecord.of({"state": "done", "attempt": "2", "result": None, "seconds": 1.5, "from_the_future": 1})
    assert (rec.state, rec.attempt, rec.result, rec.seconds, rec.error) == ("done", 2, {}, 1.5, None)
    running = R.StepRecord.of({"state": "running", "started_at": "2026-01-01T00:00:00+00:00"})
    assert R.step_seconds(running) > 0 and R.step_seconds(R.StepRecord()) is None
    done = R.StepRecord.of({"started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:30+00:00"})
    assert R.step_seconds(done) == 90.0
    failed = facts(steps={"collect": {"state": "done"}, "score_old": {"state": "skipped"},
                          "train_verifier": {"state": "failed", "error": "boom"}})
    assert failed.record("train_verifier").error == "boom" and failed.record("relabel") == R.StepRecord()
    assert R.next_action(failed) == R.Action("blocked", "train_verifier", "boom")
