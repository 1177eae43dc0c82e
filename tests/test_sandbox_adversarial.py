"""Hostile programs: each must be judged "not passed", with the executor still serving and nothing leaked or
left behind (no process of a sandbox uid, no zombie, no file outside the program's private directory)."""

from __future__ import annotations

import os
import struct
import time

import pytest

from app.sandbox import Limits, Sandbox
from tests.helpers.procs import process_table

pytestmark = pytest.mark.timeout(300)

SECRET = "mucode-test-secret-2f7c"
TESTS = {"code_prefix": "", "setup_code": "", "public_tests": ["assert f(2) == 4", "assert f(3) == 9"],
         "private_tests": []}
GOOD = "def f(x):\n    return x * x\n"
OUTSIDE = ("/etc/pwned", "/work/main/pwned", "/pwned", "/root/pwned", "/var/tmp/pwned", "/dev/shm/pwned",
           "/usr/pwned")

_frame = b"U" + struct.pack(">I", 2) + b"s" + struct.pack(">I", 2) + b"ok" + b"T"
FORGED = struct.pack(">I", len(_frame)) + _frame  # a judge-protocol answer ("ok", True)

CASES = {
    "sys_exit_at_import": "import sys\nsys.exit(0)\n",
    "os_exit_at_import": "import os\nos._exit(0)\n",
    "raise_systemexit_at_import": "raise SystemExit(0)\n",
    "sys_exit_in_function": "import sys\ndef f(x):\n    sys.exit(0)\n",
    "os_exit_in_function": "import os\ndef f(x):\n    os._exit(0)\n",
    "raise_systemexit_in_function": "def f(x):\n    raise SystemExit(0)\n",
    "prints_success": "print('Code passed all tests')\nimport sys\nsys.stderr.write('OK passed\\n')\n"
                      "def f(x):\n    print('Code passed all tests')\n    return 0\n",
    "eq_always_true": "class Yes:\n    def __eq__(self, other): return True\n"
                      "    def __ne__(self, other): return False\n"
                      "    def __bool__(self): return True\n    def __hash__(self): return 0\n"
                      "def f(x):\n    return Yes()\n",
    "int_subclass_eq_true": "class I(int):\n    def __eq__(self, other): return True\ndef f(x):\n    return I(0)\n",
    "patches_builtins": "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
                        "builtins.abs = lambda x: 0\nbuiltins.len = lambda x: 2\nbuiltins.print = lambda *a: None\n"
                        "def f(x):\n    return 0\n",
    "patches_harness": "import sys\nfor name, mod in list(sys.modules.items()):\n    if name.startswith('app.'):\n"
                       "        for attr in list(vars(mod)):\n            try: setattr(mod, attr, None)\n"
                       "            except Exception: pass\ndef f(x):\n    return 0\n",
    "writes_inherited_fds": f"import os\nFRAME = {FORGED!r}\nfor fd in range(256):\n    try: os.write(fd, FRAME)\n"
                            "    except OSError: pass\ndef f(x):\n    for fd in range(256):\n"
                            "        try: os.write(fd, FRAME)\n        except OSError: pass\n    return 0\n",
    "forges_answer_then_exits": f"import os\nFRAME = {FORGED!r}\ndef f(x):\n    for fd in range(64):\n"
                                "        try: os.write(fd, FRAME)\n        except OSError: pass\n    os._exit(0)\n",
    "kills_parent": "import os, signal\nfor pid in (os.getppid(), 1, 0, -1):\n    try: os.kill(pid, signal.SIGKILL)\n"
                    "    except OSError: pass\ndef f(x):\n    return 0\n",
    "kills_every_pid": "import os, signal\ndef f(x):\n    for pid in range(2, 70000):\n"
                       "        for sig in (signal.SIGSTOP, signal.SIGKILL):\n"
                       "            try: os.kill(pid, sig)\n            except OSError: pass\n    return 0\n",
    "fork_bomb": "import os\ndef f(x):\n    while True:\n        try: os.fork()\n        except OSError: pass\n",
    "memory_bomb": "def f(x):\n    hoard = []\n    while True:\n        hoard.append(bytearray(50_000_000))\n",
    "infinite_loop": "def f(x):\n    while True:\n        pass\n",
    "sleeps_past_deadline": "import time\ndef f(x):\n    time.sleep(1000)\n    return x * x\n",
    "gigabyte_of_output": "import sys\ndef f(x):\n    block = 'x' * (1 << 20)\n    for _ in range(1024):\n"
                          "        sys.stdout.write(block)\n    return x * x\n",
    "deep_recursion": "def f(x):\n    return f(x + 1) + 1\n",
    "deep_recursion_unlimited": "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(x):\n    return f(x + 1) + 1\n",
    "leaves_threads_and_processes": "import os, threading, time\n"
                                    "def spin():\n    while True:\n        pass\n"
                                    "for _ in range(3):\n    threading.Thread(target=spin, daemon=True).start()\n"
                                    "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                                    "        time.sleep(10000)\n    os._exit(0)\n"
                                    "def f(x):\n    threading.Thread(target=spin).start()\n    return 0\n",
    "reads_environment": "import os\nprint(dict(os.environ))\ndef f(x):\n"
                         "    raise RuntimeError(repr(dict(os.environ)))\n",
    "opens_local_sockets": "import socket\ndef f(x):\n    for port in (5432, 6379, 22, 80, 8000):\n"
                           "        s = socket.socket()\n        s.settimeout(1)\n        try:\n"
                           "            s.connect(('127.0.0.1', port))\n            return x * x\n"
                           "        except OSError:\n            pass\n    raise ConnectionError('no network')\n",
    "writes_outside_working_dir": f"def f(x):\n    for p in {OUTSIDE!r}:\n        try:\n"
                                  "            with open(p, 'w') as fh:\n"
                                  "                fh.write('pwned')\n            return x * x\n"
                                  "        except OSError:\n"
                                  "            pass\n    raise PermissionError('nothing writable')\n",
    "reads_host_files": "def f(x):\n    for p in ('/work/main/pyproject.toml', '/root/.bashrc', '/etc/shadow', "
                        f"{os.path.abspath(__file__)!r}):\n"
                        "        try:\n            open(p).read(1)\n            return x * x\n        except OSError:\n"
                        "            pass\n    raise FileNotFoundError('no host file')\n",
}


def _sandbox_processes(uid_base: int) -> list[dict[str, str]]:
    """Processes running as one of this executor's sandbox uids, with their /proc/PID/status fields."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        except OSError:
            continue
        uid = int(fields.get("Uid", "0").split()[0])
        if uid_base <= uid < uid_base + 64:
            found.append({"pid": pid, **fields})
    return found


def _not_idle_spares(procs: list[dict[str, str]], slots: int) -> list[dict[str, str]]:
    """Each slot keeps its next program's process ready (maybe still setting itself up): alone in its pid
    namespace (pid 1 there), one thread, at most one per slot. Anything else of a sandbox uid is something a
    program left behind."""
    spares = [p for p in procs if p["NSpid"].split()[-1] == "1" and p["Threads"].strip() == "1"]
    others = [p for p in procs if p not in spares]
    return others + (spares if len(spares) > slots else [])


def _zombies_under(root: int) -> list[int]:
    table = process_table()
    parents = {pid: ppid for pid, (_, ppid) in table.items()}
    states = {pid: state for pid, (state, _) in table.items()}
    tree = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return [pid for pid in tree if states.get(pid) == "Z"]


@pytest.fixture(scope="module")
def results():
    os.environ[f"MUCODE_{SECRET.upper().replace('-', '_')}"] = SECRET  # visible to the test, never inside
    names = list(CASES)
    with Sandbox(workers=2, limits=Limits(timeout_s=3)) as sb:
        assert sb.info["strong"]
        res = dict(zip(names, sb.run_many([(TESTS, CASES[n], "public") for n in names])))
        after = sb.run(TESTS, GOOD)
        leftover = _not_idle_spares(_sandbox_processes(sb.info["uid_base"]), sb.info["slots"])
        for _ in range(20):  # a process may be between its death and its parent's wait: give it a moment
            zombies = _zombies_under(sb._proc.pid)
            if not zombies:
                break
            time.sleep(0.05)
        uid_base = sb.info["uid_base"]
    yield {"res": res, "after": after, "leftover": leftover, "zombies": zombies, "uid_base": uid_base}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_program_is_not_passed_and_leaks_nothing(results, name):
    r = results["res"][name]
    assert not r.passed, r.feedback
    assert r.status not in ("passed", "sandbox_error"), r.status
    for text in (r.feedback, r.stdout, r.stderr, *(t["message"] for t in r.tests)):
        assert SECRET not in text and "MUCODE_" not in text


def test_expected_statuses(results):
    res = results["res"]
    assert res["infinite_loop"].status == "timeout"
    assert res["sleeps_past_deadline"].status == "timeout"
    assert res["fork_bomb"].status == "timeout"
    assert res["gigabyte_of_output"].status == "output_limit"
    assert res["memory_bomb"].status in ("memory", "timeout")
    assert res["deep_recursion"].status == "error" and "RecursionError" in res["deep_recursion"].feedback
    assert res["opens_local_sockets"].tests[0]["message"].startswith("ConnectionError: no network")
    assert res["writes_outside_working_dir"].tests[0]["message"].startswith("PermissionError: nothing writable")
    assert res["reads_host_files"].tests[0]["message"].startswith("FileNotFoundError: no host file")
    assert res["reads_environment"].stdout.strip() == "{}"
    assert res["prints_success"].status == "failed"
    assert "Note: the program returned a Yes object" in res["eq_always_true"].feedback


def test_executor_still_serves_and_nothing_is_left_behind(results):
    assert results["after"].passed, results["after"].feedback
    assert results["leftover"] == []
    assert results["zombies"] == []
    for path in OUTSIDE:
        assert not os.path.exists(path), path
    # After the executor closed: nothing of its uids anywhere.
    assert _sandbox_processes(results["uid_base"]) == []


def test_other_runs_are_unaffected_by_a_hostile_neighbour():
    """A fork bomb and a killer in one slot while correct programs run in the other: they still pass."""
    hostile = [CASES["fork_bomb"], CASES["kills_every_pid"], CASES["memory_bomb"]]
    with Sandbox(workers=2, limits=Limits(timeout_s=3)) as sb:
        items = []
        for i in range(12):
            items.append((TESTS, hostile[i % 3] if i % 2 == 0 else GOOD + f"# {i}\n", "public"))
        res = sb.run_many(items)
    assert [r.passed for r in res] == [i % 2 == 1 for i in range(12)]


# -- forged verdicts: programs that aim at the tests' own names and protocols --------------------------------
# Each is a wrong program that a single-namespace harness passes; each suite's correct program must pass here.
NAMES_TESTS = ["assert sorted(f([3, 1, 2])) == [1, 2, 3]", "assert len(f([5])) == 1",
               "assert isinstance(f([]), list)", "assert all(x == y for x, y in zip(f([2, 1]), [1, 2]))"]
FORGERIES = {
    # The tests' builtins, defined by the program.
    "shadows_the_tests_builtins": (
        NAMES_TESTS, ("def f(x):\n    return 'wrong'\ndef sorted(x):\n    return [1, 2, 3]\n"
                      "def len(x):\n    return 1\ndef isinstance(a, b):\n    return True\n"
                      "def zip(*a):\n    return []\n"),
        "def f(x):\n    return sorted(x)\n"),
    # The same, hidden from its source, and its snapshot of globals forged to claim dunders and setup names.
    "forged_snapshot": (
        NAMES_TESTS, ("import app.sandbox.child as _c\n_snap = _c.Harness.snapshot\n"
                      "def _forged(self, *a, **k):\n"
                      "    return _snap(self, *a, **k) + [[n, 'object', 'function'] for n in "
                      "('__builtins__', '__name__', '__import__', 'AssertionError', '__mucode_prefetched__', "
                      "'__mucode_map__', '__collect__', 'sorted', 'len', 'isinstance', 'zip', 'f')]\n"
                      "_c.Harness.snapshot = _forged\n"
                      "g = globals()\nfor _n, _v in (('sor' + 'ted', lambda x: [1, 2, 3]), ('l' + 'en', lambda x: 1),"
                      " ('isin' + 'stance', lambda a, b: True), ('z' + 'ip', lambda *a: [])):\n    g[_n] = _v\n"
                      "def f(x):\n    return 'wrong'\n"),
        "def f(x):\n    return sorted(x)\n"),
    # StopIteration from the program's function, raised in the tests, would end their map() early.
    "stop_iteration_ends_the_tests_map": (
        ["assert all(map(is_even, [2, 4, 6]))", "assert not any(map(is_even, [1, 3]))"],
        "def is_even(x):\n    raise StopIteration\n",
        "def is_even(x):\n    return x % 2 == 0\n"),
    # A setup loop the program empties with its own zip/enumerate (the EvalPlus check's shape).
    "empties_the_setup_loop": (
        ["check(f)"], "def f(x):\n    return -1\n" + "def zip(*a):\n    return []\ndef enumerate(x):\n    return []\n"
                      "def range(*a):\n    return []\n",
        "def f(x):\n    return x * x\n"),
}
FORGERY_SETUP = ("def check(candidate):\n    inputs, results = [[1], [2], [3]], [1, 4, 9]\n"
                 "    for i, (inp, exp) in enumerate(zip(inputs, results)):\n        assert candidate(*inp) == exp\n"
                 "    for k in range(3):\n        assert candidate(k) == k * k\n")


def test_forged_verdicts_fail_and_the_correct_programs_pass():
    items, expect = [], []
    for name, (tests, wrong, right) in FORGERIES.items():
        suite = {"code_prefix": "", "setup_code": FORGERY_SETUP, "public_tests": tests, "private_tests": []}
        items += [(suite, wrong, "public"), (suite, right, "public")]
        expect += [(name, False), (name, True)]
    with Sandbox(workers=2, limits=Limits(timeout_s=10)) as sb:
        res = sb.run_many(items)
    got = [(name, r.passed) for (name, _), r in zip(expect, res)]
    assert got == expect, [(n, r.status, r.feedback[:200]) for (n, _), r in zip(expect, res)]
    assert all(r.status != "sandbox_error" for r in res)
