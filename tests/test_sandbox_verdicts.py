"""The sandbox's verdicts, per-test outcomes, feedback text, plain-data rules and start-up behaviour."""

from __future__ import annotations

import os
import re

import pytest

from app.sandbox import (
    SANDBOX_VERSION,
    ExecutionResult,
    Limits,
    Sandbox,
    SandboxUnavailable,
    probe_protections,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=2, limits=Limits(timeout_s=5)) as s:
        assert s.info["strong"], f"this host should give full isolation: {s.info.get('missing')}"
        yield s


def suite(*tests, prefix="", setup=""):
    return {"code_prefix": prefix, "setup_code": setup, "public_tests": list(tests), "private_tests": []}


SQUARE = suite("assert f(2) == 4", "assert f(3) == 9", "assert f(-1) == 1")


def outcomes(r: ExecutionResult) -> list[str]:
    return [t["outcome"] for t in r.tests]


def test_pass_fail_error_per_test(sb):
    good, half, bad = sb.run_many([
        (SQUARE, "def f(x):\n    return x * x\n", "public"),
        (SQUARE, "def f(x):\n    return 4 if x == 2 else x\n", "public"),
        (SQUARE, "def f(x):\n    if x < 0:\n        raise ValueError('negative: %d' % x)\n    return x + x\n",
         "public"),
    ])
    assert good.status == "passed" and good.passed and outcomes(good) == ["pass", "pass", "pass"]
    assert good.feedback == "Code passed all tests"
    assert half.status == "failed" and not half.passed and outcomes(half) == ["pass", "fail", "fail"]
    assert half.feedback == "Failed test: assert f(3) == 9\nAssertionError"
    assert bad.status == "error" and outcomes(bad) == ["pass", "fail", "error"]
    assert bad.tests[2]["message"] == "ValueError: negative: -1 (line 3)"
    assert all(t["test"] == src for t, src in zip(good.tests, SQUARE["public_tests"]))


def test_feedback_names_the_exception_the_failing_test_and_lines_of_the_models_code(sb):
    prefix = "import math\n\n\ndef helper(x):\n    return x\n\n\n"
    code = "def f(x):\n    y = helper(x)\n    return y + undefined_name\n"
    r = sb.run(suite("assert f(2) == 4", prefix=prefix), code)
    assert r.status == "error"
    assert r.feedback == (
        "Failed test: assert f(2) == 4\n"
        "Traceback (most recent call last; line numbers are in your code):\n"
        "  line 3, in f\n"
        "    return y + undefined_name\n"
        "NameError: name 'undefined_name' is not defined"
    )


def test_feedback_has_no_host_paths(sb):
    code = ("import json, os\n"
            "def f(x):\n"
            "    json.loads('{')\n")
    r = sb.run(SQUARE, code)
    assert r.status == "error"
    assert "JSONDecodeError: Expecting property name enclosed in double quotes" in r.feedback
    assert "line 3, in f" in r.feedback
    for host in ("/root", "/work", ".venv", "site-packages", "python3.11", 'File "'):
        assert host not in r.feedback
    assert len(r.feedback) <= 2000


def test_syntax_error_and_load_error_feedback(sb):
    syn, load = sb.run_many([
        (SQUARE, "def f(x)\n    return x * x\n", "public"),
        (SQUARE, "def f(x):\n    return x * x\n\nVALUE = 1 / 0\n", "public"),
    ])
    assert syn.status == "error" and outcomes(syn) == ["error"] * 3
    assert syn.feedback == ("Your code has a syntax error:\n  line 1\n    def f(x)\n            ^\n"
                            "SyntaxError: expected ':'")
    assert load.status == "error"
    assert load.feedback.startswith("The program raised an exception while it was being loaded")
    assert "  line 4, in <module>\n    VALUE = 1 / 0\nZeroDivisionError: division by zero" in load.feedback


def test_timeout_memory_and_output_limit_are_named_plainly():
    with Sandbox(workers=2, limits=Limits(timeout_s=1.5)) as small:
        loop, mem, out = small.run_many([
            (SQUARE, "def f(x):\n    while True:\n        pass\n", "public"),
            (SQUARE, "def f(x):\n    return len([0] * (10 ** 10))\n", "public"),
            (SQUARE, "import sys\ndef f(x):\n    while True:\n        sys.stdout.write('y' * 65536)\n", "public"),
        ])
    assert loop.status == "timeout" and not loop.passed
    assert loop.feedback.startswith("Code execution timed out")
    assert "assert f(2) == 4" in loop.feedback
    assert mem.status == "memory" and mem.feedback.startswith("Code execution ran out of memory")
    assert out.status == "output_limit" and "too much output" in out.feedback
    assert len(out.stdout) <= 2100  # captured output is capped


def test_stdout_and_stderr_are_captured_and_capped(sb):
    code = "import sys\nprint('hello from load')\ndef f(x):\n    print('x =', x)\n    sys.stderr.write('warn\\n')\n" \
           "    return x * x\n"
    r = sb.run(SQUARE, code)
    assert r.passed
    assert r.stdout.splitlines() == ["hello from load", "x = 2", "x = 3", "x = -1"]
    assert r.stderr == "warn\n" * 3
    big = sb.run(SQUARE, "print('z' * 100000)\ndef f(x):\n    return x * x\n")
    assert big.passed and len(big.stdout) < 2100 and big.stdout.endswith("bytes in all)")


@pytest.mark.parametrize("code, passed", [
    ("from collections import Counter\ndef f(s):\n    return Counter(s)\n", True),  # == dict, as in Python
    ("from collections import OrderedDict\ndef f(s):\n    return OrderedDict((c, s.count(c)) for c in s)\n", True),
    ("def f(s):\n    return {c: s.count(c) for c in s}\n", True),
    ("def f(s):\n    return [(c, s.count(c)) for c in s]\n", False),
])
def test_dict_subclasses_compare_by_content(sb, code, passed):
    r = sb.run(suite("assert f('aab') == {'a': 2, 'b': 1}"), code)
    assert r.passed is passed


def test_plain_data_rules(sb):
    cases = [
        ("def f(x):\n    return float(x * x)\n", True),  # 4.0 == 4, as in Python
        ("import numpy as np\ndef f(x):\n    return np.int64(x * x)\n", True),  # NumPy scalars are numbers
        ("from collections import namedtuple\nP = namedtuple('P', 'a b')\ndef f(x):\n    return P(x, x)\n", False),
        (("class Box:\n    def __init__(self, v): self.v = v\n    def __eq__(self, o): return True\n"
          "def f(x):\n    return Box(x)\n"), False),
        ("def f(x):\n    return (y for y in [x * x])\n", False),  # a generator is not 4
        ("def f(x):\n    return str(x * x)\n", False),
        ("def f(x):\n    return True\n", False),
    ]
    results = sb.run_many([(SQUARE, code, "public") for code, _ in cases])
    assert [r.passed for r in results] == [p for _, p in cases]
    rigged = results[3]
    assert "Note: the program returned a Box object" in rigged.feedback


def test_a_test_that_does_not_compile_is_an_error_of_that_test_only(sb):
    r = sb.run(suite("assert f(2) == 4", "assert f(2) ==", "assert f(3) == 9\x00", "assert f(3) == 9"),
               "def f(x):\n    return x * x\n")
    assert outcomes(r) == ["pass", "error", "error", "pass"]
    assert r.tests[1]["message"].startswith("the test does not compile: SyntaxError")
    assert r.tests[2]["message"].startswith("the test does not compile:")
    assert not r.passed


def test_programs_that_name_numpy_start_with_it_loaded_the_others_without(sb):
    """NumPy is loaded in the numpy zygote only (the main zygote is a third smaller, so each fork is cheaper): a
    program that names it, or whose suite imports it in the program's process, starts from the numpy zygote;
    any other program from the main one, and can still import NumPy by itself."""
    assert sb.info["numpy_zygote"] and sb.info["numpy_zygote_threads"] == 1
    probe = "import sys\nLOADED = ('num' + 'py') in sys.modules\ndef f(x):\n    return LOADED\n"
    loaded, not_loaded = suite("assert f(0) == True"), suite("assert f(0) == False")
    cases = [
        (loaded, probe + "import numpy as np\n"),
        (not_loaded, probe),
        (suite("assert f(0) == True", setup="import numpy as np"), probe),
        (not_loaded, probe + "m = __import__('nu' + 'mpy')\nassert m.float64(2) * 2 == 4.0\n"),
        (loaded, probe + "# numpy\n"),
    ] * 3  # alternating: each judge switches zygotes back and forth
    results = sb.run_many([(s, code, "public") for s, code in cases])
    assert [r.status for r in results] == ["passed"] * len(cases), [r.feedback for r in results]
    with Sandbox(workers=1, preimport_numpy=False) as bare:
        assert not bare.info["numpy_zygote"]
        r = bare.run(not_loaded, probe + "import numpy as np\nassert np.arange(3).sum() == 3\n")
        assert r.passed, r.feedback


def test_tests_can_use_what_the_program_returns(sb):
    code = ("def pairs(n):\n    for i in range(n):\n        yield (i, i * i)\n"
            "class Node:\n    def __init__(self, v):\n        self.v = v\n        self.left = self.right = None\n"
            "def height(n):\n    return 0 if n is None else 1 + max(height(n.left), height(n.right))\n"
            "def check_positive(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
            "def keep(xs, t):\n    return [x for x in xs if isinstance(x, t)]\n")
    setup = "root = Node(1)\nroot.left = Node(2)\nroot.left.left = Node(3)\n"
    tests = [
        "assert list(pairs(3)) == [(0, 0), (1, 1), (2, 4)]",
        "assert dict(pairs(2)) == {0: 0, 1: 1}",
        "assert height(root) == 3",
        "assert root.left.v == 2",
        "try:\n    check_positive(-1)\n    assert False\nexcept ValueError:\n    pass",
        "assert keep([1, 'a', 2.5, 3], int) == [1, 3]",
        "assert abs(check_positive(2.5) - 2.5) < 1e-9",
        "import math\nassert math.isclose(check_positive(0.1 + 0.2), 0.3)",
    ]
    r = sb.run(suite(*tests, setup=setup), code)
    assert r.passed, r.feedback


def test_identical_programs_run_once_and_results_repeat(sb):
    code = "def f(x):\n    return x * x\n"
    a, b, c = sb.run_many([(SQUARE, code, "public"), (SQUARE, code, "public"), (SQUARE, code + "#", "public")])
    assert a == b  # one execution for identical (problem, code, suite): the very same measurements
    assert a.passed and c.passed
    again = sb.run(SQUARE, "import random\ndef f(x):\n    return x * x + random.random()\n")
    again2 = sb.run(SQUARE, "import random\ndef f(x):\n    return x * x + random.random()\n ")
    assert again.tests == again2.tests  # every program starts from the same random state


def test_values_too_large_to_send_compare_by_structural_hash(sb):
    tests = ["assert f(3_000_000) == list(range(3_000_000))", "assert len(f(3_000_000)) == 3_000_000"]
    good, wrong = sb.run_many([
        (suite(*tests), "def f(n):\n    return list(range(n))\n", "public"),
        (suite(*tests), "def f(n):\n    r = list(range(n))\n    r[-1] = 0\n    return r\n", "public"),
    ])
    assert good.passed, good.feedback
    assert outcomes(wrong) == ["fail", "pass"]


def test_an_empty_suite_proves_nothing(sb):
    r = sb.run(suite(), "def f(x):\n    return x\n")
    assert r.status == "error" and not r.passed


def test_result_maps_onto_the_execution_row(sb):
    r = sb.run(SQUARE, "def f(x):\n    return x * x\n")
    row = r.row(code_hash="c" * 64, suite_hash="s" * 64, suite_kind="public")
    assert row["sandbox_version"] == SANDBOX_VERSION
    assert set(row) == {"code_hash", "suite_hash", "suite_kind", "sandbox_version", "status", "passed", "tests",
                        "feedback", "stdout", "stderr", "duration_ms"}


def test_missing_protection_refuses_unless_weak_isolation_is_allowed():
    with pytest.raises(SandboxUnavailable, match="network namespace"):
        Sandbox(workers=1, pretend_missing=["netns"], allow_weak_isolation=False).start()
    with Sandbox(workers=1, pretend_missing=["netns"], allow_weak_isolation=True) as weak:
        assert weak.weak
        r = weak.run(SQUARE, "import os\ndef f(x):\n    return x * x if not os.environ else 0\n")
        assert r.passed


def test_probe_really_tries_each_protection():
    checks = {c.name: c for c in probe_protections()}
    for name in ("isolation", "network", "unprivileged uid", "empty environment", "resource limits",
                 "private working directory", "file system", "process isolation", "no new privileges"):
        assert checks[name].ok, (name, checks[name].detail)
    assert re.search(r"connect to 127\.0\.0\.1:\d+ from inside: refused", checks["network"].detail)
    assert "0 variables" in checks["empty environment"].detail
    assert os.environ  # the test process itself has an environment; the sandbox's is empty


def test_the_judge_survives_any_description_of_an_exception():
    """What the program's process says about an exception is plain data it chose: the judge checks each field."""
    from app.sandbox.remote import ProgramExit, clean_info, remote_exception

    for raw in ({"type": "Bad\x00Name", "bases": ["ValueError"], "message": "m"},
                {"type": "x" * 1000, "bases": ["NotABuiltin", 3], "frames": [[1, 2, 3], "junk"]},
                {"type": 7, "message": None, "syntax": [None, "x", 5]},
                "not a dict",
                {"type": "KeyboardInterrupt", "exit": True}):
        exc = remote_exception(clean_info(raw))
        assert isinstance(exc, (Exception, ProgramExit))
    err = remote_exception(clean_info({"type": "MyError", "bases": ["ValueError", "Exception"], "message": "m"}))
    assert isinstance(err, ValueError) and type(err).__name__ == "MyError" and str(err) == "m"


def test_cli_sandbox_run_prints_one_json_object(tmp_path):
    import json
    import subprocess
    import sys

    env = {**os.environ, "MUCODE_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}  # not loaded: data files
    good = tmp_path / "good.py"
    good.write_text("def has_close_elements(numbers, threshold):\n"
                    "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n")
    bad = tmp_path / "bad.py"
    bad.write_text("def has_close_elements(numbers, threshold):\n    return numbers[10]\n")
    runs = {}
    for name, path in (("good", good), ("bad", bad)):
        r = subprocess.run([sys.executable, "-m", "app.cli.main", "sandbox", "run", "HumanEval/0", str(path),
                            "--suite", "private", "--json"], env=env, capture_output=True, text=True, timeout=120,
                           check=False)
        runs[name] = (r.returncode, json.loads(r.stdout))
    code, out = runs["good"]
    assert code == 0 and out["status"] == "passed" and len(out["tests"]) == 7
    assert out["feedback"] == "Code passed all tests" and out["isolation"] == "strong"
    code, out = runs["bad"]
    assert code == 1 and out["status"] == "error"
    assert out["tests"][0]["message"] == "IndexError: list index out of range (line 2)"
    assert "line 2, in has_close_elements" in out["feedback"]


def test_a_judge_stuck_in_test_code_is_replaced_and_queued_programs_still_run():
    """Trusted test code that never returns to the interpreter (a C-level loop ignores the judge's alarm): the
    executor kills that judge at its hard deadline, reports a timeout, and runs the queued programs on a new one."""
    stuck = suite("assert f(2) == 4", setup="x = sum(range(10 ** 12))")
    with Sandbox(workers=1, limits=Limits(timeout_s=1)) as one:
        res = one.run_many([(stuck, "def f(x):\n    return x * x\n", "public")]
                           + [(SQUARE, f"def f(x):\n    return x * x  # {i}\n", "public") for i in range(3)])
    assert res[0].status == "timeout" and res[0].feedback.startswith("Code execution timed out")
    assert [r.passed for r in res[1:]] == [True, True, True]
