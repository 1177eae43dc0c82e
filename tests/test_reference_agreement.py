"""bench/reference_agreement.py on a hand-built store: the reference harness (one script, fresh interpreter,
sentinel) agrees where it should, and each planted disagreement is attributed to its deviation."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import models as m
from app.harness import Harness
from app.hashing import code_hash
from app.sandbox import Limits, Sandbox
from workers.tasks.execute import execute_candidates

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]

RADIANS = "def radian_degree(a): return math.radians(a)"  # needs the prelude's math
RIGHT = "import math\ndef radian_degree(a):\n    return a * (math.pi / 180)\n"
MAIN_BLOCK = RIGHT + "\nif __name__ == '__main__':\n    print(radian_degree(float(input())))\n"  # no stdin there
WRONG = "def radian_degree(a):\n    return a\n"
WOODALL = "def is_woodall(x):\n    return x == 383\n"  # the 3 asserts pass, the challenge asserts do not


def _bench():
    spec = importlib.util.spec_from_file_location("mucode_bench_refagree", ROOT / "bench" / "reference_agreement.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _candidates(store, evaluation_id: int, programs: list[tuple[str, str]]) -> list[int]:
    ids = []
    with store.session() as s:
        pids = dict(s.execute(select(m.Problem.external_id, m.Problem.id)).all())
        for i, (external_id, code) in enumerate(programs):
            ro = m.Rollout(evaluation_id=evaluation_id, problem_id=pids[external_id], sample_index=i, seed=i,
                           num_turns=1)
            s.add(ro)
            s.flush()
            turn = m.Turn(rollout_id=ro.id, index=1, messages=[{"role": "user", "content": "x"}])
            s.add(turn)
            s.flush()
            c = m.Candidate(turn_id=turn.id, sample_index=0, response=code, code=code, code_hash=code_hash(code))
            s.add(c)
            s.flush()
            ids.append(c.id)
    return ids


def test_disagreements_are_attributed_to_their_deviation(store, tmp_path):
    from app.datasets.registry import load_dataset

    load_dataset(store, "mbpp")
    gen = store.ensure_model_version("tiny", "generator", "tiny", "tiny")
    ev = store.create_evaluation("agree", generator_id=gen, dataset="mbpp", split="train", mode="collect")
    programs = [("mbpp/606", RADIANS), ("mbpp/606", RIGHT), ("mbpp/606", MAIN_BLOCK), ("mbpp/606", WRONG),
                ("mbpp/20", WOODALL)]
    ids = _candidates(store, ev, programs)
    # Stored as a collection from before the prelude was (no collect job: the bench takes the legacy harness).
    with Sandbox(workers=2, limits=Limits(timeout_s=10)) as sb:
        execute_candidates(store, ids, sandbox=sb, harness=Harness.legacy())
    out = tmp_path / "agree.json"
    url = store.engine.url.render_as_string(hide_password=False)
    assert _bench().main(["--database-url", url, "--collection", "agree", "--json", str(out)]) == 0
    rows = {r["candidate_id"]: r for r in json.loads(out.read_text())["candidates"]}
    radians, right, main_block, wrong, woodall = (rows[i] for i in ids)
    assert radians["stored"] == {"public": False, "private": False}
    assert radians["reference"] == {"public": True, "private": True}
    assert radians["causes"] == {"public": "prelude", "private": "prelude"}
    assert right["causes"] == {} and right["reference"] == {"public": True, "private": True}
    assert wrong["causes"] == {} and wrong["reference"] == {"public": False, "private": False}
    assert main_block["stored"] == {"public": True, "private": True}
    assert main_block["causes"] == {"public": "__main__ block", "private": "__main__ block"}
    # mbpp/20 (test split): the reference checks the first assert publicly, the other two privately, and its
    # challenge list never runs; mucode runs the challenge asserts too.
    assert woodall["stored"] == {"public": True, "private": False}
    assert woodall["reference"] == {"public": True, "private": True}
    assert woodall["causes"] == {"private": "challenge tests run (B1 fixed)"}


def test_reference_groups_follow_the_reference_envs():
    from app.config import get_settings
    from app.datasets.mbpp import load_mbpp
    from app.store.executions import StoredVerdict, SuiteProblem

    bench = _bench()
    problems = {p.external_id: p for p in load_mbpp(get_settings().data_dir).problems}

    def item(external_id: str) -> StoredVerdict:
        p = problems[external_id]
        sp = SuiteProblem(1, p.external_id, p.entry_point, p.code_prefix, p.setup_code, p.public_tests,
                          p.private_tests, "h", "h")
        return StoredVerdict(1, "", "", "mbpp", p.split, sp, p.meta, False, False, 1, None)

    train, test = item("mbpp/606"), item("mbpp/20")
    g = bench.reference_groups(train)
    assert g.public == "\n" + "\n".join(problems["mbpp/606"].public_tests) and g.private is None
    g = bench.reference_groups(test)
    tests = problems["mbpp/20"].private_tests
    assert g.public == "\n" + tests[0]
    assert g.private == "\n" + "\n".join(tests[1:3] + [repr(tests[3:])])  # B1: the challenge list as a repr
    stripped = bench.without_main_block(MAIN_BLOCK)
    assert stripped is not None and "input" not in stripped and bench.without_main_block(RIGHT) is None
