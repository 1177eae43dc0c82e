"""Hand-built stores for tests: problems, rounds, rollouts with turns, candidates, executions and scores.

Fixtures are written through the ORM in one transaction per call; tests then exercise the real store queries.
A turn spec is a dict:
    {"response": str, "code": str | None, "public": bool, "private": bool,
     "scores": {verifier_id: float}, "feedback": str | None}
or, for a Best-of-N turn, {"candidates": [spec, ...], "chosen": index}.
"""

from __future__ import annotations

import hashlib
from typing import Any

from app.db import models as m

SANDBOX_VERSION_FOR_TESTS = "seed"


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add_problem(
    store,
    external_id: str,
    *,
    dataset: str = "mbpp",
    split: str = "train",
    prompt: str | None = None,
    public_tests: list[str] | None = None,
    private_tests: list[str] | None = None,
    entry_point: str = "f",
) -> int:
    public_tests = public_tests if public_tests is not None else ["assert f(1) == 2"]
    private_tests = private_tests if private_tests is not None else public_tests + ["assert f(2) == 3"]
    with store.session() as s:
        ds = s.query(m.Dataset).filter_by(name=dataset).one_or_none()
        if ds is None:
            ds = m.Dataset(name=dataset, source_path="seed", source_sha256=_h(dataset))
            s.add(ds)
            s.flush()
        p = m.Problem(
            dataset_id=ds.id,
            split=split,
            external_id=external_id,
            prompt=prompt or f"Write a function f for {external_id}.",
            entry_point=entry_point,
            shown_tests=public_tests,
            public_tests=public_tests,
            private_tests=private_tests,
            public_suite_hash=_h(f"{external_id}/public"),
            private_suite_hash=_h(f"{external_id}/private"),
            suite_hash=_h(external_id),
        )
        s.add(p)
        s.flush()
        return p.id


def add_model(store, name: str, kind: str = "generator", base_model: str = "tiny") -> int:
    with store.session() as s:
        mv = m.ModelVersion(name=name, kind=kind, base_model=base_model, uri=base_model)
        s.add(mv)
        s.flush()
        return mv.id


def add_round(
    store, experiment: str = "exp", index: int = 0, *, method: str = "mucode", generator_id: int | None = None
) -> int:
    with store.session() as s:
        exp = s.query(m.Experiment).filter_by(name=experiment).one_or_none()
        if exp is None:
            exp = m.Experiment(name=experiment, method=method, base_model="tiny", config={})
            s.add(exp)
            s.flush()
        r = m.Round(experiment_id=exp.id, index=index, status="running", generator_id=generator_id)
        s.add(r)
        s.flush()
        return r.id


def _add_candidate(s, turn: m.Turn, spec: dict[str, Any], sample_index: int, chosen: bool, problem: m.Problem):
    code = spec.get("code") or spec["response"]
    cand = m.Candidate(
        turn_id=turn.id,
        sample_index=sample_index,
        response=spec["response"],
        code=code,
        code_hash=_h(code),
        chosen=chosen,
        public_passed=spec["public"],
        private_passed=spec["private"],
        completion_tokens=len(spec["response"].split()),
        finish_reason="stop",
    )
    s.add(cand)
    s.flush()
    for kind, passed, suite in (
        ("public", spec["public"], problem.public_suite_hash),
        ("private", spec["private"], problem.private_suite_hash),
    ):
        exists = (
            s.query(m.Execution)
            .filter_by(code_hash=cand.code_hash, suite_hash=suite, suite_kind=kind,
                       sandbox_version=SANDBOX_VERSION_FOR_TESTS)
            .one_or_none()
        )
        if exists is None:
            s.add(
                m.Execution(
                    code_hash=cand.code_hash,
                    suite_hash=suite,
                    suite_kind=kind,
                    sandbox_version=SANDBOX_VERSION_FOR_TESTS,
                    status="passed" if passed else spec.get("status", "failed"),
                    passed=passed,
                    tests=[],
                    feedback="Code passed all tests" if passed else spec.get("feedback") or "AssertionError",
                )
            )
    for verifier_id, score in (spec.get("scores") or {}).items():
        s.add(m.VerifierScore(candidate_id=cand.id, verifier_id=verifier_id, score=score))
    return cand


def add_rollout(store, *, problem_id: int, sample_index: int, turns: list[dict[str, Any]], round_id: int | None = None,
                evaluation_id: int | None = None, generator_id: int | None = None, done: bool = True) -> int:
    """A finished trajectory; its final label is the private verdict of the last turn's chosen candidate."""
    with store.session() as s:
        problem = s.get(m.Problem, problem_id)
        ro = m.Rollout(
            round_id=round_id,
            evaluation_id=evaluation_id,
            problem_id=problem_id,
            generator_id=generator_id,
            sample_index=sample_index,
            seed=1000 + sample_index,
            status="done" if done else "active",
            num_turns=len(turns),
        )
        s.add(ro)
        s.flush()
        messages: list[dict[str, str]] = [{"role": "user", "content": problem.prompt}]
        last = None
        for t, spec in enumerate(turns, start=1):
            cands = spec.get("candidates") or [spec]
            chosen_ix = spec.get("chosen", 0)
            chosen_spec = cands[chosen_ix]
            feedback = "Code passed all tests" if chosen_spec["public"] else chosen_spec.get(
                "feedback", "AssertionError"
            )
            turn = m.Turn(rollout_id=ro.id, index=t, messages=list(messages), feedback=feedback)
            s.add(turn)
            s.flush()
            for i, c in enumerate(cands):
                cand = _add_candidate(s, turn, c, i, i == chosen_ix, problem)
                if i == chosen_ix:
                    last = (cand, c)
            messages = messages + [
                {"role": "assistant", "content": chosen_spec["response"]},
                {"role": "user", "content": "Feedback: " + feedback},
            ]
        if done and last is not None:
            ro.final_label = bool(last[1]["private"])
            ro.public_passed = bool(last[1]["public"])
        return ro.id


# -- a round to relabel and train a generator on ---------------------------------------------------------------
PROMPT = "Write a Python function f that adds one."
STATE = [
    {"role": "user", "content": PROMPT},
    {"role": "assistant", "content": "```python\ndef f(x):\n    return x\n```"},
    {"role": "user", "content": "Feedback: AssertionError: assert f(1) == 2"},
]
TARGET = "```python\ndef f(x):\n    return x + 1\n```"


def sft_round(store, experiment: str, n_problems: int = 2) -> tuple[int, int]:
    """(round id, generator id) of a round with a verifier whose rollouts give a handful of SFT examples: per
    problem a correct one-turn trajectory and a failed two-turn one to relabel."""
    from sqlalchemy import update

    v = add_model(store, "rm", kind="verifier")
    g = add_model(store, "gen-base")
    rnd = add_round(store, experiment, 0, generator_id=g)
    with store.session() as s:
        s.execute(update(m.Round).where(m.Round.id == rnd).values(verifier_out_id=v))
    for i in range(n_problems):
        p = add_problem(store, f"mbpp/{900 + i}", prompt=f"Write f{i} that returns x + {i}.")
        good = f"```python\ndef f{i}(x):\n    return x + {i}\n```"
        add_rollout(store, problem_id=p, sample_index=0, round_id=rnd, generator_id=g, turns=[
            {"response": good, "public": True, "private": True, "scores": {v: 0.5}},
        ])
        add_rollout(store, problem_id=p, sample_index=1, round_id=rnd, generator_id=g, turns=[
            {"response": f"def f{i}(x): return x", "public": False, "private": False, "scores": {v: 0.1}},
            {"response": f"def f{i}(x): return {i}", "public": False, "private": False, "scores": {v: 0.2}},
        ])
    return rnd, g
