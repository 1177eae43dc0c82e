"""The import prelude (the reference's 16 import lines before every program): verdicts in the real sandbox, line
numbers of feedback, NumPy only where named, the execution cache's key, legacy collections, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from app.config import get_settings
from app.db import models as m
from app.harness import Harness
from app.hashing import code_hash
from app.sandbox import SANDBOX_VERSION, Limits, Sandbox
from app.sandbox.client import suite_of
from app.sandbox.prelude import PRELUDE, PRELUDE_LINES, PRELUDE_WITHOUT_NUMPY
from app.sandbox.types import ExecutionResult
from tests.helpers.seed import add_round
from tests.test_sandbox_execute import add_candidates
from workers.tasks.execute import execute_candidates

pytestmark = pytest.mark.timeout(600)

RADIANS = "def radian_degree(a): return math.radians(a)"  # uses math without importing it


@pytest.fixture(scope="module")
def mbpp():
    from app.datasets.mbpp import load_mbpp

    return {p.external_id: p for p in load_mbpp(get_settings().data_dir).problems}


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=2, limits=Limits(timeout_s=10)) as s:
        yield s


def test_prelude_is_the_reference_text():
    assert PRELUDE.splitlines() == [
        "import math", "import re", "import copy", "import datetime", "import itertools", "import collections",
        "import heapq", "import functools", "import hashlib", "import numpy", "import numpy as np",
        "import string", "import os", "import sys", "from typing import *", "from collections import *",
    ]  # fmt: skip
    assert len(PRELUDE_LINES) == 16
    assert PRELUDE_WITHOUT_NUMPY.splitlines() == [x for x in PRELUDE_LINES if "numpy" not in x]


def test_radian_degree_passes_with_the_prelude_and_fails_without(mbpp, sb):
    p = mbpp["mbpp/606"]
    assert p.entry_point == "radian_degree" and p.split == "train"
    with_pub, with_priv, bare_pub, bare_priv = sb.run_many(
        [(p, RADIANS, "public"), (p, RADIANS, "private")], prelude=True
    ) + sb.run_many([(p, RADIANS, "public"), (p, RADIANS, "private")])
    assert (with_pub.status, with_priv.status) == ("passed", "passed")
    assert (bare_pub.status, bare_priv.status) == ("error", "error")
    assert "NameError" in bare_pub.feedback and "math" in bare_pub.feedback


def test_tests_see_the_prelude_and_line_numbers_stay_the_models(sb):
    # The tests name Counter and math without importing them: the reference ran them in the same script.
    problem = {"public_tests": ["assert f('aab') == Counter('aab')", "assert math.floor(f('ab')['a'] + 0.5) == 1"],
               "private_tests": [], "code_prefix": "", "setup_code": ""}
    ok = sb.run(problem, "def f(s):\n    return Counter(s)\n", "public", prelude=True)
    assert ok.status == "passed", ok.feedback
    bare = sb.run(problem, "def f(s):\n    return Counter(s)\n", "public")
    assert bare.status == "error"
    code = "def f(s):\n    x = 1\n\n\n    return s[10]\n"
    r = sb.run(problem, code, "public", prelude=True)
    assert r.status == "error" and "line 5, in f" in r.feedback, r.feedback  # line 5 of the model's code


def test_numpy_lines_only_when_named_and_verdicts_match(sb):
    problem = {"public_tests": ["assert f(3) == 6"], "private_tests": [], "code_prefix": "", "setup_code": ""}
    plain = "def f(x):\n    return x * 2\n"
    uses_np = "def f(x):\n    return int(np.sum(np.array([x, x])))\n"
    uses_numpy = "def f(x):\n    return int(numpy.sum([x, x]))\n"
    assert suite_of(problem, "public", prelude=True, code=plain)["prefix"] == PRELUDE_WITHOUT_NUMPY
    assert suite_of(problem, "public", prelude=True, code=uses_np)["prefix"] == PRELUDE
    named_in_tests = {**problem, "public_tests": ["assert f(np.int64(3)) == 6"]}
    assert suite_of(named_in_tests, "public", prelude=True, code=plain)["prefix"] == PRELUDE
    # The prelude's NumPy lines are there for a program that names NumPy without importing it.
    results = sb.run_many([(problem, c, "public") for c in (plain, uses_np, uses_numpy)], prelude=True)
    assert [r.status for r in results] == ["passed", "passed", "passed"], [r.feedback for r in results]
    # Same verdicts as with all 16 lines for every program (the full prelude as the problem's own prefix).
    full = {**problem, "code_prefix": PRELUDE}
    assert [r.status for r in sb.run_many([(full, c, "public") for c in (plain, uses_np, uses_numpy)])] == [
        r.status for r in results]


def test_sandbox_version_tags_the_harness():
    assert Harness.legacy().sandbox_version() == SANDBOX_VERSION
    assert Harness().sandbox_version() == f"{SANDBOX_VERSION}+prelude"
    assert Harness(import_prelude=False, shown_tests="first").sandbox_version() == f"{SANDBOX_VERSION}+first"
    assert Harness.of({"import_prelude": True, "shown_tests": "first"}).tag == "prelude+first"
    with pytest.raises(ValueError, match="shown_tests"):
        Harness.of({"shown_tests": "some"})
    with pytest.raises(ValueError, match="unknown harness"):
        Harness.of({"prelude": True})


def _load_mbpp_606(store) -> int:
    from app.datasets.registry import load_dataset

    load_dataset(store, "mbpp")
    with store.session() as s:
        return s.execute(select(m.Problem.id).where(m.Problem.external_id == "mbpp/606")).scalar_one()


def test_pre_prelude_executions_are_not_reused_for_a_prelude_run(store, sb):
    pid = _load_mbpp_606(store)
    rid = add_round(store)
    [cid] = add_candidates(store, pid, rid, [RADIANS])
    # What a mucode before the prelude stored: the same key as today's legacy harness, judged without it.
    stats: dict = {}
    old = execute_candidates(store, [cid], sandbox=sb, stats=stats, harness=Harness.legacy())
    assert stats["ran"] == 2 and old[cid]["public"].sandbox_version == SANDBOX_VERSION
    assert (old[cid]["public"].passed, old[cid]["private"].passed) == (False, False)

    stats = {}
    new = execute_candidates(store, [cid], sandbox=sb, stats=stats)  # the default harness: the prelude
    assert stats["cached"] == 0 and stats["ran"] == 2  # the stored rows were not taken as prelude verdicts
    assert new[cid]["public"].sandbox_version == f"{SANDBOX_VERSION}+prelude"
    assert (new[cid]["public"].passed, new[cid]["private"].passed) == (True, True)
    with store.session() as s:
        assert s.execute(select(m.Candidate.public_passed, m.Candidate.private_passed)
                         .where(m.Candidate.id == cid)).one() == (True, True)
    # Each harness finds its own rows from now on, and the feedback the next turn shows is its own.
    for harness, passed in ((Harness.legacy(), False), (Harness(), True)):
        stats = {}
        again = execute_candidates(store, [cid], sandbox=sb, stats=stats, harness=harness)
        assert stats["ran"] == 0 and again[cid]["private"].passed is passed
        fb = store.public_feedback([cid], harness_tag=harness.tag)
        assert fb[cid]["status"] == ("passed" if passed else "error")


def test_a_stored_row_without_the_tag_is_never_a_prelude_verdict(store, sb):
    """A hand-written pre-prelude row claiming a pass is not returned for a prelude run (and vice versa)."""
    pid = _load_mbpp_606(store)
    rid = add_round(store)
    code = "def radian_degree(a):\n    return 0\n"  # wrong under any harness
    [cid] = add_candidates(store, pid, rid, [code])
    with store.session() as s:
        p = s.get(m.Problem, pid)
        hashes = {"public": p.public_suite_hash, "private": p.private_suite_hash}
    fake = ExecutionResult(status="passed", passed=True, tests=[], feedback="Code passed all tests")
    store.record_executions([fake.row(code_hash=code_hash(code), suite_hash=hashes[k], suite_kind=k,
                                      sandbox_version=SANDBOX_VERSION) for k in ("public", "private")])
    stats: dict = {}
    out = execute_candidates(store, [cid], sandbox=sb, stats=stats, harness=Harness())
    assert stats["cached"] == 0 and out[cid]["private"].passed is False
    legacy = execute_candidates(store, [cid], sandbox=sb, harness=Harness.legacy())
    assert legacy[cid]["private"].passed is True  # the legacy harness keeps using what it stored


def test_legacy_collection_spec_keeps_no_prelude():
    from workers.collect import LEGACY_SPEC, CollectSpec

    stored_before = {"turns": 2, "samples_per_problem": 1}  # a spec frozen before the harness fields existed
    spec = CollectSpec.stored(stored_before)
    assert spec.harness == Harness.legacy() and LEGACY_SPEC["import_prelude"] is False
    assert CollectSpec(turns=2).harness == Harness()  # a new collection: the reference's prelude


def test_rounds_and_evaluations_take_the_experiments_harness():
    from app import rounds as R
    from app.protocol import ExperimentConfig

    new = ExperimentConfig(base_model="m")
    old = ExperimentConfig.frozen({"base_model": "m"})  # created before the harness setting
    for cfg, prelude in ((new, True), (old, False)):
        specs = R.eval_specs(cfg, name_prefix="x", generator_label="G0", generator_id=1, verifier_id=2)
        assert specs and all(s.collect_spec()["import_prelude"] is prelude for s in specs)
    first = ExperimentConfig(base_model="m", rollout={"train_shown_tests": "first"})
    facts = type("F", (), {"config": first, "generator_id": 1, "index": 0})()
    spec = R.collect_inputs(facts)["spec"]
    assert (spec["import_prelude"], spec["shown_tests"]) == (True, "first")


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUCODE_DATABASE_URL": db_url, "MUCODE_DATA_DIR": str(get_settings().data_dir),
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "app.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_sandbox_run_cli_prelude_switch(tmp_path: Path):
    prog = tmp_path / "radians.py"
    prog.write_text(RADIANS + "\n")
    url = f"sqlite:///{tmp_path / 'empty.db'}"  # not migrated: the problem comes from the data files
    on = _cli(url, "sandbox", "run", "mbpp/606", str(prog), "--suite", "private", "--json")
    assert on.returncode == 0, on.stdout + on.stderr
    off = _cli(url, "sandbox", "run", "mbpp/606", str(prog), "--suite", "private", "--no-prelude")
    assert off.returncode == 1 and "no prelude" in off.stdout and "NameError" in off.stdout
