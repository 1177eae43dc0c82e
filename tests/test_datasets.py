"""Dataset loaders: counts per split, the protocol encoded in each problem, idempotent and safe loading."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from sqlalchemy import select

from app.config import get_settings
from app.datasets import DATASETS, load_dataset, parse_dataset
from app.db import models as m
from app.errors import DataError

DATA = get_settings().data_dir

# HumanEval problems whose docstring examples are written in prose (transcribed by hand), wrong (corrected) or
# absent (one assert from the statement); every other problem's public test is parsed from its docstring.
HUMANEVAL_PUBLIC_SOURCE = {
    **dict.fromkeys((67, 68, 76, 78, 80, 81, 84, 94, 105, 107, 112, 115, 120, 122, 129, 133, 141, 142, 143, 147,
                     149, 160), "prose"),
    116: "corrected",
    **dict.fromkeys((38, 41, 50, 83), "statement"),
}


@cache
def parsed(name: str) -> dict[str, dict]:
    return {p.external_id: p.row() for p in parse_dataset(name, DATA).problems}


def test_split_counts_after_loading_everything(store):
    for name in DATASETS:
        result = load_dataset(store, name, DATA)
        assert result.applied and result.inserted == result.total
    assert store.split_counts() == {
        "mbpp": {"prompt": 10, "test": 500, "validation": 90, "train": 374},
        "mbpp_sanitized": {"prompt": 7, "test": 257, "validation": 43, "train": 120},
        "humaneval": {"test": 164},
        "humaneval_plus": {"test": 164},
        "mbpp_plus": {"prompt": 7, "test": 224, "validation": 39, "train": 108},
    }
    assert [p.external_id for p in store.list_problems("mbpp", "train", limit=2)] == ["mbpp/601", "mbpp/602"]
    sources = {p.external_id: p.meta["public_source"] for p in store.list_problems("humaneval")
               if "public_source" in p.meta}
    assert sources == {f"HumanEval/{i}": src for i, src in sorted(HUMANEVAL_PUBLIC_SOURCE.items())}


def _snapshot(store) -> list:
    with store.session() as s:
        datasets = [
            (d.name, d.source_sha256, d.num_problems, d.loaded_at) for d in s.scalars(select(m.Dataset))
        ]
        problems = [
            tuple(getattr(p, c.name) for c in m.Problem.__table__.c)
            for p in s.scalars(select(m.Problem).order_by(m.Problem.id))
        ]
    return [datasets, problems]


def test_reload_changes_nothing(store):
    first = [load_dataset(store, n, DATA) for n in ("mbpp", "humaneval")]
    before = _snapshot(store)
    again = [load_dataset(store, n, DATA) for n in ("mbpp", "humaneval")]
    assert [(r.inserted, r.unchanged, r.changed, r.applied) for r in again] == [
        (0, 974, [], True),
        (0, 164, [], True),
    ]
    assert [r.inserted for r in first] == [974, 164]
    assert _snapshot(store) == before  # not even loaded_at moved


def _copy_mbpp(tmp_path: Path, edit) -> Path:  # edit(lines) changes the list in place
    (tmp_path / "mbpp").mkdir()
    lines = (DATA / "mbpp" / "mbpp.jsonl").read_text().splitlines()
    edit(lines)
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text("\n".join(lines) + "\n")
    # A deliberate other revision declares its checksum; without it the load stops at the checksum.
    digest = hashlib.sha256((tmp_path / "mbpp" / "mbpp.jsonl").read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  mbpp/mbpp.jsonl\n")
    return tmp_path


def test_changed_file_is_reported_and_needs_force(store, tmp_path):
    load_dataset(store, "mbpp", DATA)
    before = _snapshot(store)

    def edit(lines):
        rec = json.loads(lines[10])  # task 11
        rec["challenge_test_list"][0] = 'assert remove_Occ("hellolloll","l") == "x"'
        lines[10] = json.dumps(rec)

    changed = _copy_mbpp(tmp_path, edit)
    result = load_dataset(store, "mbpp", changed)
    assert not result.applied and result.source_changed
    assert [(c.external_id, c.fields) for c in result.changed] == [
        ("mbpp/11", ["private_tests", "private_suite_hash", "suite_hash"])
    ]
    assert (
        result.changed[0].old_suite_hash
        == parsed("mbpp")["mbpp/11"]["suite_hash"]
        != result.changed[0].new_suite_hash
    )
    assert _snapshot(store) == before
    forced = load_dataset(store, "mbpp", changed, force=True)
    assert forced.applied and forced.updated == 1 and forced.unchanged == 973
    p = store.get_problem("mbpp/11")
    assert p.private_tests[3].endswith('== "x"') and p.suite_hash == forced.changed[0].new_suite_hash
    assert (
        p.public_suite_hash == parsed("mbpp")["mbpp/11"]["public_suite_hash"]
    )  # the public suite is the same


def test_malformed_line_names_file_and_line_and_writes_nothing(store, tmp_path):
    def truncate(lines):
        lines[499] = lines[499][:40]

    bad = _copy_mbpp(tmp_path, truncate)
    with pytest.raises(DataError, match=r"mbpp\.jsonl, line 500: not valid JSON"):
        load_dataset(store, "mbpp", bad)
    assert store.list_datasets() == [] and store.count_problems() == 0

    def drop_field(lines):
        rec = json.loads(lines[2])
        del rec["test_list"]
        lines[2] = json.dumps(rec)

    shutil.rmtree(tmp_path / "mbpp")
    with pytest.raises(DataError, match=r"mbpp\.jsonl, line 3: missing field 'test_list'"):
        load_dataset(store, "mbpp", _copy_mbpp(tmp_path, drop_field))
    assert store.count_problems() == 0


def test_missing_data_directory_and_file(tmp_path):
    with pytest.raises(DataError, match=r"data directory .*nowhere does not exist.*MUCODE_DATA_DIR"):
        parse_dataset("mbpp", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"humaneval/HumanEval\.jsonl\.gz is missing \(expected sha256 b796127e"):
        parse_dataset("humaneval", tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'mbpp_pluss'"):
        parse_dataset("mbpp_pluss", DATA)


def test_mbpp_protocol():
    mbpp = parsed("mbpp")
    train, test = mbpp["mbpp/601"], mbpp["mbpp/11"]
    assert train["split"] == "train" and len(train["public_tests"]) == 3
    assert train["shown_tests"] == train["public_tests"] == train["private_tests"]
    assert test["split"] == "test" and test["shown_tests"] == test["public_tests"] == [
        'assert remove_Occ("hello","l") == "heo"'
    ]
    # The challenge asserts are real statements of the private suite (they never ran in the reference).
    assert test["private_tests"][3:] == [
        'assert remove_Occ("hellolloll","l") == "helollol"',
        'assert remove_Occ("","l") == ""',
    ]
    assert test["entry_point"] == "remove_Occ" and test["meta"] == {"task_id": 11, "challenge_tests": 2}
    challenged = [p["meta"]["task_id"] for p in mbpp.values() if len(p["private_tests"]) > 3]
    assert challenged == [11, 16, 20, 23, 25, 26, 28, 42, 43, 44, 47]
    # Setup code runs after the candidate's code and is shown before the asserts; CRLF becomes LF.
    tree = mbpp["mbpp/367"]
    assert tree["setup_code"].startswith("root = Node(1)") and "\r" not in tree["setup_code"]
    assert tree["shown_tests"] == [tree["setup_code"], "assert is_tree_balanced(root) == False"]
    assert {p["split"] for p in mbpp.values()} == {"prompt", "test", "validation", "train"}
    assert mbpp["mbpp/10"]["split"] == "prompt" and mbpp["mbpp/600"]["split"] == "validation"
    sanitized = parsed("mbpp_sanitized")["mbpp_sanitized/82"]
    assert sanitized["setup_code"] == "import math" and sanitized["shown_tests"][0] == "import math"


def test_humaneval_protocol():
    he = parsed("humaneval")
    p0 = he["HumanEval/0"]
    assert p0["public_tests"] == ["assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False"]
    assert p0["shown_tests"][1] == "assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True"
    assert p0["code_prefix"] == "from typing import List\n\n\n" and p0["setup_code"] == ""  # METADATA dropped
    assert len(p0["private_tests"]) == 7 and p0["private_tests"][0] == (
        "assert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"
    )
    # A check that is more than asserts runs whole; the prompt's helpers form the code prefix.
    p32 = he["HumanEval/32"]
    assert p32["private_tests"] == ["check(find_zero)"] and "def check(candidate)" in p32["setup_code"]
    assert p32["code_prefix"].startswith("import math") and "def poly(" in p32["code_prefix"]
    assert p32["public_tests"] == ["assert round(find_zero([1, 2]), 2) == -0.5"]
    # Inline examples ("f(x) ==> y") and ">>> f(x) == y" lines count; prose examples come from the table.
    assert he["HumanEval/77"]["public_tests"] == ["assert iscube(1) == True"]
    assert he["HumanEval/162"]["public_tests"] == [("assert string_to_md5('Hello world') == "
                                                    "'3e25960a79dbc69b674cd4ec67a72c62'")]
    assert he["HumanEval/68"]["public_tests"] == ["assert pluck([4, 2, 3]) == [2, 1]"]
    assert he["HumanEval/38"]["public_tests"] == ["assert decode_cyclic(encode_cyclic('abcdefgh')) == 'abcdefgh'"]
    # Docstring lines that contradict the reference are not used.
    assert "assert tri(1) == 3" not in he["HumanEval/130"]["shown_tests"]
    assert "assert sort_array([1, 5, 2, 3, 4]) == [1, 2, 3, 4, 5]" not in he["HumanEval/116"]["shown_tests"]
    # The hidden tests never appear among the shown ones; a test written from the statement is not a hidden one.
    assert all(not t.startswith("check(") and "def check" not in t for p in he.values() for t in p["shown_tests"])
    for i, src in HUMANEVAL_PUBLIC_SOURCE.items():
        if src == "statement":
            assert he[f"HumanEval/{i}"]["public_tests"][0] not in he[f"HumanEval/{i}"]["private_tests"]


@pytest.mark.parametrize("name", ["humaneval", "humaneval_plus"])
def test_every_humaneval_public_test_is_one_nontrivial_assert_calling_the_entry_point(name):
    """The rule of app/datasets/humaneval.py, checked on the AST of each of the 164 public tests."""
    import ast

    problems = parsed(name)
    assert len(problems) == 164
    bad = []
    for pid, p in problems.items():
        [test] = p["public_tests"]  # exactly one
        tree = ast.parse(test)
        ok = len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert)
        cond = tree.body[0].test if ok else None
        calls = {n.func.id for n in ast.walk(cond) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)} \
            if ok else set()
        if not ok or isinstance(cond, ast.Constant) or p["entry_point"] not in calls or test not in p["shown_tests"]:
            bad.append((pid, test))
    assert bad == []


def test_public_test_rule_is_enforced_at_load_time(tmp_path):
    """A problem whose only example would break the rule is a DataError naming it, not a silent fallback."""
    from app.datasets.humaneval import humaneval_problem, public_test_problem

    assert public_test_problem("assert True, 'x'", "f") == "it asserts a constant"
    assert public_test_problem("check(f)", "f") == "it is not a single assert statement"
    assert public_test_problem("assert g(1) == 2", "f") == "it does not call f"
    assert public_test_problem("assert f(1) == 2", "f") is None
    record = {"task_id": "HumanEval/999", "entry_point": "f", "canonical_solution": "    return 1\n",
              "prompt": 'def f():\n    """Returns one."""\n',
              "test": "def check(candidate):\n    assert candidate() == 1\n"}
    with pytest.raises(DataError, match=r"HumanEval/999 has no docstring example"):
        humaneval_problem(record, "file, line 1", id_prefix="HumanEval")


def test_plus_datasets():
    hep = parsed("humaneval_plus")
    assert hep["HumanEvalPlus/0"]["private_tests"] == ["check(has_close_elements)"]
    assert "inputs = " in hep["HumanEvalPlus/0"]["setup_code"]
    assert [k for k, p in hep.items() if "upstream_broken" in p["meta"]] == ["HumanEvalPlus/32"]
    assert hep["HumanEvalPlus/41"]["public_tests"] == parsed("humaneval")["HumanEval/41"]["public_tests"]
    mp = parsed("mbpp_plus")
    p2 = mp["MbppPlus/2"]
    assert p2["split"] == "prompt" and p2["entry_point"] == "similar_elements"
    assert p2["public_tests"] == ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"]
    assert len(p2["private_tests"]) == 1 and "for i, (inp, exp) in enumerate" in p2["private_tests"][0]
    assert len(mp["MbppPlus/602"]["public_tests"]) == 3  # a train problem shows all three


def test_suite_hashes_cover_what_decides_a_verdict():
    p = parse_dataset("mbpp", DATA).problems[10]
    row = p.row()
    assert (
        row == p.row() and len({row["public_suite_hash"], row["private_suite_hash"], row["suite_hash"]}) == 3
    )
    p.setup_code = "x = 1"
    assert p.row()["public_suite_hash"] != row["public_suite_hash"]
    p.setup_code, p.prompt = "", "another wording"
    assert p.row()["suite_hash"] == row["suite_hash"]  # the prompt text does not decide a verdict


# The reference solutions must pass the suites we built: this checks the order code prefix -> code -> setup ->
# tests, the renaming of candidate, the docstring-derived asserts and the split of check. Trusted code, run
# in a child process.
_RUNNER = r"""
import json, signal, sys
def _alarm(*_):
    raise TimeoutError("over 240 s")
signal.signal(signal.SIGALRM, _alarm)
failed = []
for p in json.load(sys.stdin):
    for kind in ("shown_tests", "public_tests", "private_tests"):
        for test in p[kind]:
            signal.alarm(240)  # MBPP+ has inputs that take a minute on a busy machine
            try:
                program = p["code_prefix"] + p["code"] + "\n" + p["setup_code"] + "\n" + test
                exec(program, {"__name__": "__main__"})
            except BaseException as exc:
                failed.append([p["external_id"], kind, repr(exc)[:200]])
            finally:
                signal.alarm(0)
print(json.dumps(failed))
"""


def _failures(rows: list[dict]) -> list[list[str]]:
    for r in rows:
        # HumanEval stores the body; its signature and docstring are the prompt after the code prefix.
        signature = r["prompt"][len(r["code_prefix"]) :] if r["external_id"].startswith("HumanEval") else ""
        r["code"] = signature + r["reference_solution"]
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(rows),
        capture_output=True,
        text=True,
        timeout=1500,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("name", ["mbpp", "mbpp_sanitized", "humaneval"])
def test_reference_solutions_pass_their_suites(name):
    assert _failures(list(parsed(name).values())) == []


def test_reference_solutions_pass_plus_suites_sample():
    hep, mp = parsed("humaneval_plus"), parsed("mbpp_plus")
    rows = [hep[f"HumanEvalPlus/{i}"] for i in (0, 32, 38, 53)] + [mp[f"MbppPlus/{i}"] for i in (2, 120, 602)]
    assert _failures(rows) == [
        ["HumanEvalPlus/32", "private_tests", "TypeError('Value after * must be an iterable, not float')"]
    ]


@pytest.mark.slow
def test_reference_solutions_pass_all_plus_suites():
    rows = list(parsed("humaneval_plus").values()) + list(parsed("mbpp_plus").values())
    assert [f[0] for f in _failures(rows)] == ["HumanEvalPlus/32"]


@pytest.mark.timeout(900)
def test_every_humaneval_public_test_passes_the_canonical_solution_and_fails_a_wrong_one():
    """In the real sandbox, with the import prelude (the default harness): every canonical solution passes its
    public test; for the problems whose public test used to be ``assert True`` or the whole ``check``, a wrong
    solution now fails it (the feedback says something)."""
    import importlib.util

    from app.sandbox import Limits, Sandbox

    spec = importlib.util.spec_from_file_location("mucode_bench_sandbox", Path(__file__).parents[1] / "bench" /
                                                  "sandbox.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    problems = parse_dataset("humaneval", DATA).problems
    with Sandbox(workers=2, limits=Limits(timeout_s=60)) as sb:
        right = sb.run_many([(p, bench.reference_program(p), "public") for p in problems], prelude=True)
        were_trivial = [p for p in problems if int(p.external_id.split("/")[1]) in (38, 50, 68, 83, 84, 105, 115,
                                                                                     116, 128)]
        wrong = sb.run_many([(p, bench.wrong_program(p), "public") for p in were_trivial], prelude=True)
    assert [(p.external_id, r.feedback[:200]) for p, r in zip(problems, right) if not r.passed] == []
    assert [p.external_id for p, r in zip(were_trivial, wrong) if r.passed] == []
