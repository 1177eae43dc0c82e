"""A small but complete store for the dashboard tests: two rounds of one experiment, their training rollouts
(single-candidate turns) with executions, verifier scores, evaluations (greedy and Best-of-N on MBPP and
HumanEval) with per-chain results, an evaluation rollout with Best-of-N turns, relabeled SFT examples, jobs
and verifier metrics. Every number the dashboard shows for it is worked out by hand in ``EXPECTED``.

Round 0 training rollouts (verifier v0 scores in brackets; P = passes public+private, F = fails):
  mbpp/601  ro0: NameError(-1.0) -> P(2.0)            solved at turn 2
            ro1: P(1.5)                                solved at turn 1
  mbpp/602  ro0: timeout(0.5) -> Assertion(0.8) -> public-only(1.2)   ends at 3, wrong (false public pass)
            ro1: P(0.9)                                solved at turn 1
  mbpp/603  ro0: SyntaxError(-2.0) -> ZeroDivisionError(-1.5) -> Assertion(-0.5)   never solved
Round 1 (verifier v1):
  mbpp/601  ro0: P(2.5)
  mbpp/602  ro0: Assertion(0.1) -> P(1.0)
  mbpp/603  ro0: timeout(-1.0) -> memory(-0.5) -> NameError(-2.0)    never solved
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.db import models as m
from tests.helpers.seed import add_model, add_problem, add_rollout, add_round

T0 = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)

PROMPTS = {
    "mbpp/601": "Write a function to find the longest chain which can be formed from the given set of pairs.",
    "mbpp/602": "Write a python function to find the first repeated character in a given string.",
    "mbpp/603": "Write a function to get all lucid numbers smaller than or equal to a given integer.",
    "mbpp/11": "Write a python function to remove first and last occurrence of a given character from the string.",
    "mbpp/12": "Write a function to sort a given matrix in ascending order according to the sum of its rows.",
    "HumanEval/0": "Check if in given list of numbers, are any two numbers closer to each other than threshold.",
    "HumanEval/1": "Separate groups of nested parentheses into separate strings.",
    "HumanEval/2": "Return the decimal part of a floating point number.",
}

# Accuracy the seed implies (percent), per (round, dataset, mode) -> [turn1, turn2, turn3] true success.
EXPECTED: dict[str, Any] = {
    "eval_true": {
        (0, "mbpp", "greedy"): [0.0, 50.0, 50.0],
        (0, "mbpp", "bon"): [25.0, 50.0, 50.0],
        (1, "mbpp", "greedy"): [50.0, 50.0, 100.0],
        (1, "mbpp", "bon"): [75.0, 100.0, 100.0],
        (0, "humaneval", "greedy"): [33.3, 33.3, 33.3],
        (0, "humaneval", "bon"): [50.0, 50.0, 50.0],
        (1, "humaneval", "greedy"): [33.3, 66.7, 66.7],
        (1, "humaneval", "bon"): [50.0, 75.0, 75.0],
    },
    # round 0 mbpp bon: public success by turn and any-of-chains success by turn
    "r0_mbpp_bon_public": [50.0, 75.0, 75.0],
    "r0_mbpp_bon_any": [50.0, 50.0, 50.0],
    # training trajectories solved by turn t
    "train_true": {0: [40.0, 60.0, 60.0], 1: [33.3, 66.7, 66.7]},
    # training candidates: (candidates, public passes, private passes, public-only)
    "train_candidates": {0: (10, 4, 3, 1), 1: (6, 2, 2, 0)},
    # verifier v0 on round 0: pairs right / pairs, top-1 misses / problems with a correct candidate
    "v0_r0_pairs": (4, 5),
    "v0_r0_top1": (1, 2),
    "unsolved_train": ["mbpp/603"],
    "unsolved_eval": ["HumanEval/2"],
}


def _c(response: str, public: bool, private: bool, score: float, vid: int, *, status: str | None = None,
       feedback: str | None = None) -> dict[str, Any]:
    code = response
    spec: dict[str, Any] = {
        "response": f"```python\n{code}\n```",
        "code": code,
        "public": public,
        "private": private,
        "scores": {vid: score},
    }
    if not public or not private:
        spec["status"] = status or "failed"
        spec["feedback"] = feedback or "AssertionError: assert f(2) == 3"
    return spec


def _tests_for(passed: bool, status: str, feedback: str, kind: str) -> list[dict[str, Any]]:
    tests = ["assert f(1) == 2"] if kind == "public" else ["assert f(1) == 2", "assert f(2) == 3"]
    if passed:
        return [{"test": t, "outcome": "passed", "message": ""} for t in tests]
    out = [{"test": tests[0], "outcome": "error" if status != "failed" else "failed",
            "message": feedback}]
    out += [{"test": t, "outcome": "skipped", "message": ""} for t in tests[1:]]
    return out


def seed_dashboard(store) -> dict[str, Any]:
    ids: dict[str, Any] = {"problems": {}}
    for ext, prompt in PROMPTS.items():
        dataset = "humaneval" if ext.startswith("HumanEval") else "mbpp"
        split = "test" if ext in ("mbpp/11", "mbpp/12") or dataset == "humaneval" else "train"
        ids["problems"][ext] = add_problem(store, ext, dataset=dataset, split=split, prompt=prompt)
    g0 = add_model(store, "tiny-base", "generator")
    v0 = add_model(store, "exp-demo/r0/verifier", "verifier")
    g1 = add_model(store, "exp-demo/r0/generator", "generator")
    v1 = add_model(store, "exp-demo/r1/verifier", "verifier")
    ids.update(g0=g0, v0=v0, g1=g1, v1=v1)
    r0 = add_round(store, "exp-demo", 0, generator_id=g0)
    r1 = add_round(store, "exp-demo", 1, generator_id=g1)
    ids.update(r0=r0, r1=r1)
    _seed_training_rollouts(store, ids)
    _seed_evaluations(store, ids)
    _seed_executions(store)
    with store.session() as s:
        _seed_round_state(s, ids)
        _seed_sft_examples(s, ids)
        _seed_jobs(s, ids)
    return ids


def _seed_training_rollouts(store, ids: dict[str, Any]) -> None:
    P, g0, v0, g1, v1, r0, r1 = (ids[k] for k in ("problems", "g0", "v0", "g1", "v1", "r0", "r1"))
    ro = ids["rollouts"] = {}
    ro["r0/601/0"] = add_rollout(store, problem_id=P["mbpp/601"], sample_index=0, round_id=r0, generator_id=g0,
                                 turns=[
        _c("def f(x):\n    return foo(x)", False, False, -1.0, v0, status="error",
           feedback="NameError: name 'foo' is not defined (line 2)"),
        _c("def f(x):\n    return x + 1", True, True, 2.0, v0)])
    ro["r0/601/1"] = add_rollout(store, problem_id=P["mbpp/601"], sample_index=1, round_id=r0, generator_id=g0,
                                 turns=[_c("def f(x):\n    return 1 + x", True, True, 1.5, v0)])
    ro["r0/602/0"] = add_rollout(store, problem_id=P["mbpp/602"], sample_index=0, round_id=r0, generator_id=g0,
                                 turns=[
        _c("def f(x):\n    while True:\n        pass", False, False, 0.5, v0, status="timeout",
           feedback="Timeout: the code ran longer than 10 seconds"),
        _c("def f(x):\n    return x", False, False, 0.8, v0,
           feedback="AssertionError: assert f(1) == 2"),
        _c("def f(x):\n    return 2", True, False, 1.2, v0,
           feedback="AssertionError: assert f(2) == 3")])
    ro["r0/602/1"] = add_rollout(store, problem_id=P["mbpp/602"], sample_index=1, round_id=r0, generator_id=g0,
                                 turns=[_c("def f(x):\n    return x + 1  # 602", True, True, 0.9, v0)])
    ro["r0/603/0"] = add_rollout(store, problem_id=P["mbpp/603"], sample_index=0, round_id=r0, generator_id=g0,
                                 turns=[
        _c("def f(x) return x", False, False, -2.0, v0, status="error",
           feedback="SyntaxError: invalid syntax (line 1)"),
        _c("def f(x):\n    return x / 0", False, False, -1.5, v0, status="error",
           feedback="ZeroDivisionError: division by zero (line 2)"),
        _c("def f(x):\n    return x * 3", False, False, -0.5, v0,
           feedback="AssertionError: assert f(1) == 2")])
    ro["r1/601/0"] = add_rollout(store, problem_id=P["mbpp/601"], sample_index=0, round_id=r1, generator_id=g1,
                                 turns=[_c("def f(x):\n    return x + 1  # r1", True, True, 2.5, v1)])
    ro["r1/602/0"] = add_rollout(store, problem_id=P["mbpp/602"], sample_index=0, round_id=r1, generator_id=g1,
                                 turns=[
        _c("def f(x):\n    return x - 1", False, False, 0.1, v1, feedback="AssertionError: assert f(1) == 2"),
        _c("def f(x):\n    return x + 1  # r1 602", True, True, 1.0, v1)])
    ro["r1/603/0"] = add_rollout(store, problem_id=P["mbpp/603"], sample_index=0, round_id=r1, generator_id=g1,
                                 turns=[
        _c("def f(x):\n    import time\n    time.sleep(100)", False, False, -1.0, v1, status="timeout",
           feedback="Timeout: the code ran longer than 10 seconds"),
        _c("def f(x):\n    return [0] * 10**10", False, False, -0.5, v1, status="memory",
           feedback="MemoryError: the program exceeded the memory limit"),
        _c("def f(x):\n    return bar", False, False, -2.0, v1, status="error",
           feedback="NameError: name 'bar' is not defined (line 2)")])


def _seed_evaluations(store, ids: dict[str, Any]) -> None:
    P, v0, g1, v1, r0, r1 = (ids[k] for k in ("problems", "v0", "g1", "v1", "r0", "r1"))
    ro = ids["rollouts"]
    # (round, dataset, mode) -> {problem: [per chain: (first public turn or None, first solved turn or None)]}
    plans: dict[tuple[int, str, str], dict[str, list[tuple[int | None, int | None]]]] = {
        (0, "mbpp", "greedy"): {"mbpp/11": [(2, 2)], "mbpp/12": [(None, None)]},
        (0, "mbpp", "bon"): {"mbpp/11": [(1, 1), (2, 2)], "mbpp/12": [(1, None), (None, None)]},
        (1, "mbpp", "greedy"): {"mbpp/11": [(1, 1)], "mbpp/12": [(3, 3)]},
        (1, "mbpp", "bon"): {"mbpp/11": [(1, 1), (1, 1)], "mbpp/12": [(1, 1), (2, 2)]},
        (0, "humaneval", "greedy"): {"HumanEval/0": [(1, 1)], "HumanEval/1": [(None, None)],
                                     "HumanEval/2": [(None, None)]},
        (0, "humaneval", "bon"): {"HumanEval/0": [(1, 1), (1, 1)], "HumanEval/1": [(None, None), (None, None)]},
        (1, "humaneval", "greedy"): {"HumanEval/0": [(1, 1)], "HumanEval/1": [(2, 2)],
                                     "HumanEval/2": [(1, None)]},
        (1, "humaneval", "bon"): {"HumanEval/0": [(1, 1), (1, 1)], "HumanEval/1": [(2, 2), (None, None)]},
    }
    ids["evaluations"] = {}
    with store.session() as s:
        exp = s.query(m.Experiment).filter_by(name="exp-demo").one()
        exp_id = exp.id
        for (rnd, dataset, mode), probs in plans.items():
            rid = r0 if rnd == 0 else r1
            ev = m.Evaluation(
                name=f"exp-demo/r{rnd}/{dataset}/{mode}", experiment_id=exp_id, round_id=rid,
                generator_id=g1, verifier_id=v0 if rnd == 0 else v1, dataset=dataset,
                split="test", mode=mode, selector="pt+lv" if mode == "bon" else None,
                num_candidates=5 if mode == "bon" else 1, num_chains=2 if mode == "bon" else 1, max_turns=3,
                status="done", finished_at=T0 + timedelta(hours=2 + rnd * 3),
            )
            s.add(ev)
            s.flush()
            ids["evaluations"][(rnd, dataset, mode)] = ev.id
            for ext, chains in probs.items():
                for chain, (pub, sol) in enumerate(chains):
                    stop = pub or 3  # a chain stops at its first public pass
                    for t in range(1, stop + 1):
                        s.add(m.EvaluationResult(
                            evaluation_id=ev.id, problem_id=P[ext], chain_index=chain, turn_index=t,
                            public_passed=pub == t, private_passed=sol == t,
                            solved=sol is not None and t >= sol))
    ev_bon = ids["evaluations"][(1, "mbpp", "bon")]
    ro["eval/11/0"] = add_rollout(store, problem_id=P["mbpp/11"], sample_index=0, evaluation_id=ev_bon,
                                  generator_id=g1, turns=[{"candidates": [
        _c("def remove_occ(s, ch):\n    return s.replace(ch, '')", False, False, 0.3, v1,
           feedback="AssertionError: assert remove_occ('hello','l') == 'heo'"),
        _c("def remove_occ(s, ch):\n    i = s.find(ch)\n    j = s.rfind(ch)\n    return s[:i] + s[i+1:j] + s[j+1:]",
           True, True, 1.7, v1)], "chosen": 1}])


def _seed_executions(store) -> None:
    with store.session() as s:
        for e in s.query(m.Execution).all():
            e.tests = _tests_for(e.passed, e.status, e.feedback, e.suite_kind)
            e.duration_ms = 10000.0 if e.status == "timeout" else (250.0 if e.status == "memory" else 40.0)


def _seed_round_state(s, ids: dict[str, Any]) -> None:
    v0, g1, v1, r0, r1 = (ids[k] for k in ("v0", "g1", "v1", "r0", "r1"))
    rd0, rd1 = s.get(m.Round, r0), s.get(m.Round, r1)
    rd0.status, rd0.verifier_out_id, rd0.generator_out_id = "done", v0, g1
    rd0.started_at, rd0.finished_at = T0, T0 + timedelta(hours=3)
    steps0, t = {}, T0
    for name, secs in (("collect", 3000), ("score", 120), ("train_verifier", 1800), ("relabel", 30),
                       ("train_generator", 4200), ("evaluate", 1650)):
        steps0[name] = {"state": "done", "started_at": t.isoformat(),
                        "finished_at": (t + timedelta(seconds=secs)).isoformat(), "seconds": secs}
        t += timedelta(seconds=secs)
    rd0.steps = steps0
    rd1.status, rd1.verifier_in_id, rd1.verifier_out_id = "running", v0, v1
    rd1.started_at = T0 + timedelta(hours=3)
    rd1.steps = {"collect": {"state": "done", "seconds": 2400},
                 "score": {"state": "running", "started_at": (T0 + timedelta(hours=4)).isoformat()}}
    calib = [{"lo": i / 5, "hi": (i + 1) / 5, "count": 10 + i, "mean_predicted": (i + 0.5) / 5,
              "observed": min(1.0, i / 4)} for i in range(5)]
    # v0: what trainers/verifier/evaluate.py stores; v1: a flat, older layout (found by key name)
    for mv, metrics in ((v0, {"eval": {
                            "holdout": {"roc_auc": 0.81, "pair_accuracy": 0.77, "bon_accuracy": 0.6,
                                        "bon_random_baseline": 0.4, "bon_oracle_rate": 0.8, "problems": 3,
                                        "ece": 0.12, "calibration": calib},
                            "mbpp_test": {"roc_auc": 0.79, "pair_accuracy": 0.74, "bon_accuracy": 0.5,
                                          "bon_random_baseline": 0.35, "bon_oracle_rate": 0.7, "problems": 2},
                            "seconds": 1.5}}),
                        (v1, {"auc": 0.86, "pair_accuracy": 0.83})):
        obj = s.get(m.ModelVersion, mv)
        obj.metrics = metrics
        obj.round_id = r0 if mv == v0 else r1


def _seed_sft_examples(s, ids: dict[str, Any]) -> None:
    P, v0, r0 = ids["problems"], ids["v0"], ids["r0"]
    ro = ids["rollouts"]
    exp_id = s.query(m.Experiment).filter_by(name="exp-demo").one().id
    ts = m.TrainingSet(name="exp-demo/r0/sft", kind="sft", experiment_id=exp_id, round_id=r0)
    s.add(ts)
    s.flush()
    ids["training_set"] = ts.id

    def chosen_cand(rollout_id: int, turn: int) -> int:
        return (s.query(m.Candidate.id).join(m.Turn, m.Turn.id == m.Candidate.turn_id)
                .filter(m.Turn.rollout_id == rollout_id, m.Turn.index == turn, m.Candidate.chosen)
                .scalar())

    target_602 = chosen_cand(ro["r0/602/1"], 1)
    target_601 = chosen_cand(ro["r0/601/0"], 2)
    ids["target_602"] = target_602
    examples = [
        (P["mbpp/602"], ro["r0/602/0"], 1, target_602, "relabeled"),
        (P["mbpp/602"], ro["r0/602/0"], 2, target_602, "relabeled"),
        (P["mbpp/602"], ro["r0/602/0"], 3, target_602, "relabeled"),
        (P["mbpp/602"], ro["r0/602/1"], 1, target_602, "positive"),
        (P["mbpp/601"], ro["r0/601/0"], 1, target_601, "positive"),
        (P["mbpp/601"], ro["r0/601/0"], 2, target_601, "positive"),
    ]
    for pid, rid, turn, target, source in examples:
        s.add(m.SftExample(training_set_id=ts.id, problem_id=pid, rollout_id=rid, turn_index=turn,
                           target_candidate_id=target, source=source, verifier_id=v0))


def _seed_jobs(s, ids: dict[str, Any]) -> None:
    r0, r1 = ids["r0"], ids["r1"]
    def job(key, kind, queue, state, rid, start, secs, error=None, attempts=1):
        s.add(m.Job(key=key, kind=kind, queue=queue, state=state, round_id=rid, attempts=attempts,
                    error=error, queued_at=T0 + timedelta(seconds=start - 5) if start is not None else T0,
                    started_at=T0 + timedelta(seconds=start) if start is not None else None,
                    finished_at=T0 + timedelta(seconds=start + secs) if secs is not None else None))

    job("r0/sample/0", "sample", "sample", "done", r0, 0, 1500)
    job("r0/sample/1", "sample", "sample", "done", r0, 1500, 1400)
    job("r0/execute/0", "execute", "execute", "done", r0, 100, 60)
    job("r0/train_verifier", "train_verifier", "train", "done", r0, 3120, 1800)
    job("r0/train_generator", "train_generator", "train", "failed", r0, 4950, 30,
        error="RuntimeError: CUDA out of memory", attempts=3)
    job("r0/train_generator/retry", "train_generator", "train", "done", r0, 4980, 4170)
    job("r1/sample/0", "sample", "sample", "running", r1, 11000, None)
    job("r1/execute/0", "execute", "execute", "queued", r1, None, None)
    job("r1/execute/1", "execute", "execute", "queued", r1, None, None)


# -- a second experiment for the comparison page ---------------------------------------------------------
# exp-rft: the same MBPP test problems and settings as exp-demo (greedy, and BoN N=5 C=2 pt+lv, 3 turns).
# Plans as above: per problem, per chain (first public turn, first solved turn).
COMPARE_PLANS: dict[tuple[int, str], dict[str, list[tuple[int | None, int | None]]]] = {
    (0, "greedy"): {"mbpp/11": [(1, 1)], "mbpp/12": [(None, None)]},
    (0, "bon"): {"mbpp/11": [(1, 1), (1, 1)], "mbpp/12": [(1, None), (None, None)]},
    (1, "greedy"): {"mbpp/11": [(1, 1)], "mbpp/12": [(2, 2)]},
    (1, "bon"): {"mbpp/11": [(1, None), (1, 1)], "mbpp/12": [(2, 2), (1, 1)]},
}
# exp-rft round 1 BoN: every first-turn candidate (public, private, score of the round's verifier) per problem
# and chain; pt+lv picks the best-scored public pass (marked *), which the plans above follow.
COMPARE_FIRST_TURN: dict[str, list[list[tuple[bool, bool, float]]]] = {
    "mbpp/11": [[(False, False, 0.1), (True, True, 0.4), (True, False, 0.9), (False, False, 2.0),  # * 0.9
                 (False, False, -1.0)],
                [(True, True, 1.5), (False, False, 0.3), (True, True, 0.2), (False, False, -0.4),  # * 1.5
                 (False, True, 0.8)]],
    "mbpp/12": [[(False, False, 0.5), (False, False, 0.1), (False, False, -0.2), (False, False, 1.1),  # * 1.1
                 (False, False, 0.0)],
                [(True, True, 0.6), (False, False, 0.9), (False, False, 0.25), (True, True, -0.3),  # * 0.6
                 (False, False, 0.4)]],
}
COMPARE_EXPECTED: dict[str, Any] = {
    # true success per turn (percent) of exp-rft's evaluations
    "eval_true": {(0, "greedy"): [50.0, 50.0, 50.0], (0, "bon"): [50.0, 50.0, 50.0],
                  (1, "greedy"): [50.0, 100.0, 100.0], (1, "bon"): [50.0, 75.0, 75.0]},
}


def seed_comparison(store, ids: dict[str, Any]) -> dict[str, Any]:
    """Add exp-rft (after ``seed_dashboard``): two finished rounds evaluated on exp-demo's MBPP test problems,
    created before exp-demo so that exp-demo stays the sidebar's default. Returns its ids."""
    P = ids["problems"]
    out: dict[str, Any] = {"evaluations": {}}
    g0 = add_model(store, "exp-rft/r0/generator", "generator")
    g1 = add_model(store, "exp-rft/r1/generator", "generator")
    v0 = add_model(store, "exp-rft/r0/verifier", "verifier")
    v1 = add_model(store, "exp-rft/r1/verifier", "verifier")
    r0 = add_round(store, "exp-rft", 0, method="rft", generator_id=g0)
    r1 = add_round(store, "exp-rft", 1, method="rft", generator_id=g1)
    out.update(g0=g0, g1=g1, v0=v0, v1=v1, r0=r0, r1=r1)
    with store.session() as s:
        exp = s.query(m.Experiment).filter_by(name="exp-rft").one()
        exp.created_at = T0 - timedelta(days=1)
        out["experiment"] = exp.id
        for rid, gid, vid, rnd in ((r0, g0, v0, 0), (r1, g1, v1, 1)):
            rd = s.get(m.Round, rid)
            rd.status, rd.verifier_out_id = "done", vid
            rd.started_at, rd.finished_at = T0 + timedelta(hours=rnd), T0 + timedelta(hours=rnd + 1)
            s.get(m.ModelVersion, vid).round_id = rid
            for mode in ("greedy", "bon"):
                ev = m.Evaluation(
                    name=f"exp-rft/r{rnd}/mbpp/{mode}", experiment_id=exp.id, round_id=rid, generator_id=gid,
                    verifier_id=vid, dataset="mbpp", split="test", mode=mode,
                    selector="pt+lv" if mode == "bon" else None, num_candidates=5 if mode == "bon" else 1,
                    num_chains=2 if mode == "bon" else 1, max_turns=3, status="done",
                    finished_at=T0 + timedelta(hours=rnd + 1))
                s.add(ev)
                s.flush()
                out["evaluations"][(rnd, mode)] = ev.id
                for ext, chains in COMPARE_PLANS[(rnd, mode)].items():
                    for chain, (pub, sol) in enumerate(chains):
                        for t in range(1, (pub or 3) + 1):
                            s.add(m.EvaluationResult(
                                evaluation_id=ev.id, problem_id=P[ext], chain_index=chain, turn_index=t,
                                public_passed=pub == t, private_passed=sol == t,
                                solved=sol is not None and t >= sol))
    ev_bon = out["evaluations"][(1, "bon")]
    for ext, chains in COMPARE_FIRST_TURN.items():
        for chain, cands in enumerate(chains):
            specs = [_c(f"def f(x):\n    return x  # {ext} chain {chain} candidate {i}", pub, priv, score, v1)
                     for i, (pub, priv, score) in enumerate(cands)]
            key = [100.0 * pub + score for pub, _, score in cands]
            turns = [{"candidates": specs, "chosen": key.index(max(key))}]
            if not cands[key.index(max(key))][0]:  # no public pass at turn 1: turn 2 passes (plan (2, 2))
                turns.append(_c(f"def f(x):\n    return x + 1  # {ext} chain {chain} turn 2", True, True, 1.0, v1))
            add_rollout(store, problem_id=P[ext], sample_index=chain, evaluation_id=ev_bon, generator_id=g1,
                        turns=turns)
    return out
