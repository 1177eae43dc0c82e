"""Test loops whose calls are sent to the program ahead of the loop (EvalPlus checks: hundreds of inputs each).

The loop itself runs in the judge as written; only its calls of the program go out early, in the same order, so
a verdict is the one the loop would give calling them one at a time.
"""

from __future__ import annotations

import ast

import pytest

from app.sandbox import Limits, Sandbox
from app.sandbox.prefetch import MAP, MAPPED, map_loops

pytestmark = pytest.mark.timeout(300)

EVALPLUS_LOOP = "for i, (inp, exp) in enumerate(zip(inputs, results)):\n    assertion(f(*inp), exp, 0)\n"
ASSERTION = "def assertion(out, exp, atol):\n    assert out == exp, f'out: {out}, exp: {exp}'\n"


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=2, limits=Limits(timeout_s=5)) as s:
        yield s


def loop_suite(inputs, results, loop=EVALPLUS_LOOP, setup=ASSERTION):
    test = f"inputs = {inputs!r}\nresults = {results!r}\n" + loop
    return {"code_prefix": "", "setup_code": setup, "public_tests": [], "private_tests": [test]}


def rewritten(src: str) -> str:
    tree = ast.parse(src)
    map_loops(tree.body)
    return ast.unparse(tree)


@pytest.mark.parametrize("loop, mapped", [
    (EVALPLUS_LOOP, True),
    ("def check(candidate):\n    for inp, exp in zip(inputs, results):\n        assert candidate(*inp) == exp\n",
     True),
    ("for x in xs:\n    out = f(x)\n    assert out > 0\n", True),
    ("for x in xs:\n    assert f(x) > 0\n    if x > 3:\n        break\n", False),  # stops early: fewer calls
    ("for x in xs:\n    if x:\n        assert f(x) > 0\n", False),  # not every iteration calls
    ("for x in xs:\n    assert g(1) == f(x)\n", False),  # another call first
    ("for x in xs:\n    assert obj.y == f(x)\n", False),  # an attribute first (could be the program's)
    ("for x in xs:\n    assert f(x, 1) > 0\n", False),  # more than the item
    ("for x in range(3):\n    assert f(x) > 0\n", False),  # not a named list
    ("for x in xs:\n    for y in x:\n        break\n    assert f(x) > 0\n", False),  # f is not first
])
def test_which_loops_are_rewritten(loop, mapped):
    out = rewritten(loop)
    assert (MAP in out and MAPPED in out) is mapped, out


def test_loop_verdicts_match_calling_one_at_a_time(sb):
    stateful = "calls = []\ndef f(x, y=0):\n    calls.append(x)\n    return [len(calls), x + y]\n"
    n = 300
    good = loop_suite([[i, 1] for i in range(n)], [[i + 1, i + 1] for i in range(n)])
    wrong_at_7 = loop_suite([[i, 1] for i in range(n)], [[i + 1, i + 1 if i != 7 else -1] for i in range(n)])
    raises = "def f(x, y=0):\n    if x == 5:\n        raise KeyError(x)\n    return [x + 1, x + y]\n"
    hangs = "def f(x, y=0):\n    while x == 9:\n        pass\n    return [x + 1, x + y]\n"
    plain = "def f(x, y=0):\n    return [x + 1, x + y]\n"
    r_good, r_wrong, r_raise, r_hang, r_plain = sb.run_many([
        (good, stateful, "private"), (wrong_at_7, stateful, "private"), (good, raises, "private"),
        (good, hangs, "private"), (good, plain, "private"),
    ])
    assert r_good.status == "passed", r_good.feedback  # every call in order: the counter matches
    assert r_plain.status == "passed"
    assert r_wrong.status == "failed" and "out: [8, 8], exp: [8, -1]" in r_wrong.feedback
    assert r_raise.status == "error" and "KeyError: 5" in r_raise.feedback
    assert r_hang.status == "timeout"


def test_the_calls_are_already_waiting_while_the_program_computes(sb):
    """What the rewriting is for: while the program computes one call, the requests for the next ones are
    already in its socket (fd 3 in the program's process); one at a time, they never are."""
    probe = ("import select\nseen = []\n"
             "def f(x):\n    seen.append(bool(select.select([3], [], [], 0.05)[0]))\n    return x\n"
             "def waiting():\n    return sum(seen)\n")
    loop = EVALPLUS_LOOP + "n = waiting()\nassert n > 10, n\n"  # (not an assert's call: those run first)
    on = sb.run(loop_suite([[i] for i in range(40)], list(range(40)), loop=loop), probe, "private")
    assert on.passed, on.feedback
    with Sandbox(workers=1, limits=Limits(timeout_s=5), send_ahead=False) as one_at_a_time:
        off = one_at_a_time.run(loop_suite([[i] for i in range(40)], list(range(40)), loop=loop), probe,
                                "private")
    assert off.status == "failed" and off.feedback.endswith("AssertionError: 0"), off.feedback


def test_large_and_many_items_do_not_block_the_judge(sb):
    """Sending ahead stays within the socket's buffer: 3,000 small items, and items of 300 KB each."""
    many = loop_suite([[i] for i in range(3000)], [i * 2 for i in range(3000)])
    big = loop_suite([["x" * 300_000, i] for i in range(12)], [300_000 + i for i in range(12)])
    r_many, r_big = sb.run_many([(many, "def f(x):\n    return 2 * x\n", "private"),
                                 (big, "def f(s, i):\n    return len(s) + i\n", "private")])
    assert r_many.passed, r_many.feedback
    assert r_big.passed, r_big.feedback


def test_a_loop_that_asks_more_of_the_program_still_gets_right_answers(sb):
    """The loop's body also reads an object the program returned: the calls sent ahead are drained first and
    no more calls go ahead for this program; every answer is still the right one."""
    code = ("class Box:\n    def __init__(self, v):\n        self.v = v\n"
            "def f(x):\n    return Box(x * 3)\n")
    loop = "for inp, exp in zip(inputs, results):\n    assert f(*inp).v == exp\n"
    loop2 = "for inp, exp in zip(inputs, results):\n    box = f(*inp)\n    assert box.v == exp\n"
    rows = ([[i] for i in range(50)], [i * 3 for i in range(50)])
    wrong = ([[i] for i in range(50)], [i * 3 if i != 30 else 0 for i in range(50)])
    r1, r2, r3 = sb.run_many([(loop_suite(*rows, loop=loop), code, "private"),
                              (loop_suite(*rows, loop=loop2), code, "private"),
                              (loop_suite(*wrong, loop=loop2), code, "private")])
    assert r1.passed and r2.passed, (r1.feedback, r2.feedback)
    assert r3.status == "failed" and r3.tests[0]["outcome"] == "fail"


def test_evalplus_reference_solutions_pass_through_the_rewritten_loops(sb):
    from app.datasets import parse_dataset

    try:
        he = parse_dataset("humaneval_plus").problems[:12]
        mb = parse_dataset("mbpp_plus").problems[:12]
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"benchmark data not available: {exc}")
    items = [(p, p.prompt[len(p.code_prefix):] + p.reference_solution, "private") for p in he] \
        + [(p, p.reference_solution, "private") for p in mb]
    results = sb.run_many(items)
    assert [(p.external_id, r.status) for (p, _, _), r in zip(items, results) if not r.passed] == []


def test_a_program_with_parameters_named_like_the_judges_own_arguments_still_passes(sb):
    # the tests' calls go out ahead through a helper taking (k, fn, *args, **kwargs): a keyword argument
    # named k or fn must reach the program, not the helper (a correct program would fail with a TypeError)
    code = "def f(k, fn=0, *, args=1, kwargs=2):\n    return k + fn + args + kwargs\n"
    tests = ["assert f(k=1, fn=2) == 6", "assert f(1, fn=2, args=3, kwargs=4) == 10", "assert f(k=5) == 8"]
    (r,) = sb.run_many([({"code_prefix": "", "setup_code": "", "public_tests": tests, "private_tests": []},
                         code, "public")])
    assert r.status == "passed", r.feedback
