"""HumanEval and HumanEval+ (EvalPlus OriginFmt).

Protocol: the prompt field is the problem; the code prefix is the prompt up to ``def <entry_point>`` (imports
and helper functions the candidate may rely on). Private = the full ``check``: its body split into top-level
asserts when it is only asserts, else ``check(<entry_point>)`` with the test module as setup code.

The public test. Rule: a problem's public test is ONE ``assert`` statement that calls the entry point and is not
always true (``public_test_problem`` checks it at load time; the tests check that every one passes with the
canonical solution in the sandbox). It comes from the entry point's docstring examples, never from ``check``
(a test of check would show the model a hidden test, and ``assert True`` would pass any program that loads):

- ``docstring``: the first example parsed from the docstring (doctest ``>>>`` lines, ``>>> f(x) == y``, inline
  forms such as ``f(1) ==> 2``) that agrees with the canonical solution (``WRONG_EXAMPLES`` lists the ones that
  do not);
- otherwise the examples a docstring gives in prose, transcribed by hand in ``PROSE_EXAMPLES`` (``prose``; or
  ``corrected`` where every example of the docstring is wrong, ``statement`` where it has none), recorded in
  ``meta["public_source"]``.
 Shown = every such example (the reference showed the whole example
block); public = the first of them.
"""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path
from typing import Any

from app.datasets.base import (
    ParsedDataset,
    ProblemSpec,
    field_of,
    parse_python,
    read_jsonl,
    require_file,
    sha256_files,
)
from app.errors import DataError

HUMANEVAL_FILE = "humaneval/HumanEval.jsonl.gz"  # as upstream publishes it
HUMANEVAL_PLUS_FILE = "evalplus/HumanEvalPlus-OriginFmt-v0.1.10.jsonl.gz"

# Known upstream defects of the loaded data (app/data/benchmarks/README.md); the sandbox's reference-solution
# test skips them. Keyed by task id.
HUMANEVAL_PLUS_BROKEN = {
    "HumanEval/32": "OriginFmt oracle calls _poly(*candidate(*inp), inp): every solution fails (EvalPlus)",
}

# Docstring lines that read like examples but contradict the reference solution and the hidden tests
# (upstream typos, and a recurrence definition); never used as shown or public tests.
WRONG_EXAMPLES = {
    "HumanEval/47": {"assert median([-10, 4, 6, 1000, 10, 20]) == 15.0"},
    "HumanEval/116": {"assert sort_array([1, 5, 2, 3, 4]) == [1, 2, 3, 4, 5]",
                      "assert sort_array([-2, -3, -4, -5, -6]) == [-6, -5, -4, -3, -2]"},
    "HumanEval/130": {"assert tri(1) == 3", "assert tri(4) == 3"},
    "HumanEval/148": {"assert bf('Earth', 'Mercury') == 'Venus'"},
}

# The examples of docstrings written in prose ("For lst = [1,2,3] the output should be 14", "Input: ... Output:
# ...", "f(x) => true"), transcribed by hand as asserts, in the docstring's order: (source, asserts).
#   "prose": the docstring's own examples, word for word.
#   "corrected": the docstring's inputs, with the outputs of the canonical solution and the hidden tests (every
#       example the docstring gives is wrong).
#   "statement": the docstring has no example; one assert follows from the statement, on an input the hidden
#       tests do not use.
PROSE_EXAMPLES: dict[str, tuple[str, list[str]]] = {
    "HumanEval/38": ("statement", ["assert decode_cyclic(encode_cyclic('abcdefgh')) == 'abcdefgh'"]),
    "HumanEval/41": ("statement", ["assert car_race_collision(5) == 25"]),
    "HumanEval/50": ("statement", ["assert decode_shift(encode_shift('abcxyz')) == 'abcxyz'"]),
    "HumanEval/67": ("prose", [
        "assert fruit_distribution('5 apples and 6 oranges', 19) == 8",
        "assert fruit_distribution('0 apples and 1 oranges', 3) == 2",
        "assert fruit_distribution('2 apples and 3 oranges', 100) == 95",
        "assert fruit_distribution('100 apples and 1 oranges', 120) == 19"]),
    "HumanEval/68": ("prose", [
        "assert pluck([4, 2, 3]) == [2, 1]", "assert pluck([1, 2, 3]) == [2, 1]", "assert pluck([]) == []",
        "assert pluck([5, 0, 3, 0, 4, 2]) == [0, 1]"]),
    "HumanEval/76": ("prose", [
        "assert is_simple_power(1, 4) == True", "assert is_simple_power(2, 2) == True",
        "assert is_simple_power(8, 2) == True", "assert is_simple_power(3, 2) == False",
        "assert is_simple_power(3, 1) == False", "assert is_simple_power(5, 3) == False"]),
    "HumanEval/78": ("prose", [
        "assert hex_key('AB') == 1", "assert hex_key('1077E') == 2", "assert hex_key('ABED1A33') == 4",
        "assert hex_key('123456789ABCDEF0') == 6", "assert hex_key('2020') == 2"]),
    "HumanEval/80": ("prose", [
        "assert is_happy('a') == False", "assert is_happy('aa') == False", "assert is_happy('abcd') == True",
        "assert is_happy('aabb') == False", "assert is_happy('adb') == True", "assert is_happy('xyy') == False"]),
    "HumanEval/81": ("prose", [
        "assert numerical_letter_grade([4.0, 3, 1.7, 2, 3.5]) == ['A+', 'B', 'C-', 'C', 'A-']"]),
    "HumanEval/83": ("statement", ["assert starts_one_ends(6) == 180000"]),
    "HumanEval/84": ("prose", [
        "assert solve(1000) == '1'", "assert solve(150) == '110'", "assert solve(147) == '1100'"]),
    "HumanEval/94": ("prose", [
        "assert skjkasdkd([0, 3, 2, 1, 3, 5, 7, 4, 5, 5, 5, 2, 181, 32, 4, 32, 3, 2, 32, 324, 4, 3]) == 10",
        "assert skjkasdkd([1, 0, 1, 8, 2, 4597, 2, 1, 3, 40, 1, 2, 1, 2, 4, 2, 5, 1]) == 25",
        "assert skjkasdkd([1, 3, 1, 32, 5107, 34, 83278, 109, 163, 23, 2323, 32, 30, 1, 9, 3]) == 13",
        "assert skjkasdkd([0, 724, 32, 71, 99, 32, 6, 0, 5, 91, 83, 0, 5, 6]) == 11",
        "assert skjkasdkd([0, 81, 12, 3, 1, 21]) == 3", "assert skjkasdkd([0, 8, 1, 2, 1, 7]) == 7"]),
    "HumanEval/105": ("prose", [
        ("assert by_length([2, 1, 1, 4, 5, 8, 2, 3]) == "
         "['Eight', 'Five', 'Four', 'Three', 'Two', 'Two', 'One', 'One']"),
        "assert by_length([]) == []", "assert by_length([1, -1, 55]) == ['One']"]),
    "HumanEval/107": ("prose", [
        "assert even_odd_palindrome(3) == (1, 2)", "assert even_odd_palindrome(12) == (4, 6)"]),
    "HumanEval/112": ("prose", [
        "assert reverse_delete('abcde', 'ae') == ('bcd', False)",
        "assert reverse_delete('abcdef', 'b') == ('acdef', False)",
        "assert reverse_delete('abcdedcba', 'ab') == ('cdedc', True)"]),
    "HumanEval/115": ("prose", [
        "assert max_fill([[0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], 1) == 6",
        "assert max_fill([[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1]], 2) == 5",
        "assert max_fill([[0, 0, 0], [0, 0, 0]], 5) == 0"]),
    "HumanEval/116": ("corrected", [
        "assert sort_array([1, 5, 2, 3, 4]) == [1, 2, 4, 3, 5]",
        "assert sort_array([-2, -3, -4, -5, -6]) == [-4, -2, -6, -5, -3]",
        "assert sort_array([1, 0, 2, 3, 4]) == [0, 1, 2, 4, 3]"]),
    "HumanEval/120": ("prose", [
        "assert maximum([-3, -4, 5], 3) == [-4, -3, 5]", "assert maximum([4, -4, 4], 2) == [4, 4]",
        "assert maximum([-3, 2, 1, 2, -1, -2, 1], 1) == [2]"]),
    "HumanEval/122": ("prose", ["assert add_elements([111, 21, 3, 4000, 5, 6, 7, 8, 9], 4) == 24"]),
    "HumanEval/129": ("prose", [
        "assert minPath([[1, 2, 3], [4, 5, 6], [7, 8, 9]], 3) == [1, 2, 1]",
        "assert minPath([[5, 9, 3], [4, 1, 6], [7, 8, 2]], 1) == [1]"]),
    "HumanEval/133": ("prose", [
        "assert sum_squares([1, 2, 3]) == 14", "assert sum_squares([1, 4, 9]) == 98",
        "assert sum_squares([1, 3, 5, 7]) == 84", "assert sum_squares([1.4, 4.2, 0]) == 29",
        "assert sum_squares([-2.4, 1, 1]) == 6"]),
    "HumanEval/141": ("prose", [
        "assert file_name_check('example.txt') == 'Yes'", "assert file_name_check('1example.dll') == 'No'"]),
    "HumanEval/142": ("prose", [
        "assert sum_squares([1, 2, 3]) == 6", "assert sum_squares([]) == 0",
        "assert sum_squares([-1, -5, 2, -1, -5]) == -126"]),
    "HumanEval/143": ("prose", [
        "assert words_in_sentence('This is a test') == 'is'",
        "assert words_in_sentence('lets go for swimming') == 'go for'"]),
    "HumanEval/147": ("prose", ["assert get_max_triples(5) == 1"]),
    "HumanEval/149": ("prose", [
        "assert sorted_list_sum(['aa', 'a', 'aaa']) == ['aa']",
        "assert sorted_list_sum(['ab', 'a', 'aaa', 'cd']) == ['ab', 'cd']"]),
    "HumanEval/160": ("prose", ["assert do_algebra(['+', '*', '-'], [2, 3, 4, 5]) == 9"]),
}

# Inline example forms besides doctest: "f(1) == 2", "f(1) ==> 2", "f(1) ➞ 2", "f(1) returns 2", ...
_SEPARATORS = ("should return", "# returns", "returns", "return", "==>", "=>", "➞", "->", "==", "=")
_BUILTINS = frozenset(dir(builtins))


def code_prefix(prompt: str, entry_point: str, where: str) -> tuple[str, str]:
    """(the prompt before ``def entry_point``, the rest: signature and docstring)."""
    m = re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", prompt, flags=re.MULTILINE)
    if m is None:
        raise DataError(f"{where}: the prompt does not define the entry point {entry_point!r}")
    return prompt[: m.start()], prompt[m.start() :]


def _as_assert(expr_src: str, out_src: str, entry_point: str) -> str | None:
    """``assert <expr> == <out>`` when expr calls only the entry point and builtins and out is a literal."""
    try:
        expr = parse_python(expr_src.strip(), "eval").body
        out = parse_python(out_src.strip(), "eval").body
        ast.literal_eval(out)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
    if entry_point not in names or not names <= _BUILTINS | {entry_point}:
        return None
    left = ast.unparse(expr)
    if isinstance(expr, (ast.Compare, ast.BoolOp, ast.IfExp, ast.Lambda)):  # ">>> f(x) == y" / True
        left = f"({left})"
    return f"assert {left} == {ast.unparse(out)}"


def _compare_example(src: str, entry_point: str) -> str | None:
    """``>>> f(x) == y`` with no output line: the comparison itself is the example."""
    try:
        node = parse_python(src.strip(), "eval").body
    except SyntaxError:
        return None
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return None
    return _as_assert(ast.unparse(node.left), ast.unparse(node.comparators[0]), entry_point)


def _inline_example(line: str, entry_point: str) -> str | None:
    start = line.find(entry_point + "(")
    if start < 0 or (start > 0 and (line[start - 1].isalnum() or line[start - 1] == "_")):
        return None
    text = line[start:]
    # The call ends at the first ")" that closes a parseable expression.
    for end in (i for i, ch in enumerate(text) if ch == ")"):
        try:
            parse_python(text[: end + 1], "eval")
        except SyntaxError:
            continue
        rest = text[end + 1 :].strip()
        for sep in _SEPARATORS:
            if rest.startswith(sep):
                out = rest[len(sep) :].strip().rstrip(".,;").strip()
                return _as_assert(text[: end + 1], out, entry_point) if out else None
        return None
    return None


def docstring_examples(signature_and_doc: str, entry_point: str) -> list[str]:
    """Asserts built from the examples of the entry point's docstring, in order, without duplicates."""
    lines = signature_and_doc.splitlines()
    found: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line.startswith(">>>"):
            out: list[str] = []
            while i < len(lines):
                nxt = lines[i].strip()
                if not nxt or nxt.startswith((">>>", '"""', "'''")):
                    break
                out.append(nxt)
                i += 1
            example = _as_assert(line[3:], " ".join(out), entry_point) if out else _compare_example(line[3:],
                                                                                                     entry_point)
        else:
            example = _inline_example(line.lstrip("*-• ").strip(), entry_point)
        if example and example not in found:
            found.append(example)
    return found


def public_test_problem(test: str, entry_point: str) -> str | None:
    """Why ``test`` breaks the public-test rule (None when it keeps it): one ``assert`` statement that calls the
    entry point and is not always true."""
    try:
        tree = parse_python(test)
    except SyntaxError as exc:
        return f"it does not parse ({exc.msg})"
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return "it is not a single assert statement"
    cond = tree.body[0].test
    if isinstance(cond, ast.Constant):
        return "it asserts a constant"
    calls = {n.func.id for n in ast.walk(cond) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    if entry_point not in calls:
        return f"it does not call {entry_point}"
    return None


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(id=self.new, ctx=node.ctx) if node.id == self.old else node


def _bound_names(body: list[ast.stmt]) -> set[str]:
    """Names a module's top-level statements bind (assignments, imports, functions, classes)."""
    names: set[str] = set()
    for n in body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.split(".")[0] for a in n.names)
        elif isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            names.update(t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name))
    return names


def split_check(test: str, entry_point: str, where: str) -> tuple[str, list[str], str]:
    """(setup code, private tests, public fallback) from a HumanEval ``test`` module.

    The fallback is the first assert of check that stands alone, else ``check(<entry_point>)``.
    """
    try:
        tree = parse_python(test)
    except SyntaxError as exc:
        raise DataError(f"{where}: the test code does not parse ({exc.msg}, line {exc.lineno})") from exc
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or len(checks[0].args.args) != 1:
        raise DataError(f"{where}: the test code must define check(candidate)")
    check = checks[0]
    rename = _Rename(check.args.args[0].arg, entry_point)
    asserts = [rename.visit(n) for n in check.body if isinstance(n, ast.Assert)]
    # A standalone assert may use only the entry point, builtins and the module's own names; one that
    # needs check's local state cannot be lifted out, and then the whole check is the fallback.
    module_names = _bound_names(tree.body)
    standalone = [
        a
        for a in asserts
        if {n.id for n in ast.walk(a) if isinstance(n, ast.Name)} <= _BUILTINS | module_names | {entry_point}
    ]
    first = ast.unparse(standalone[0]) if standalone else f"check({entry_point})"
    if len(asserts) != len(check.body):
        return test, [f"check({entry_point})"], first
    asserts_src = [ast.unparse(a) for a in asserts]
    # Only asserts: run them one by one at module level; keep the module's other statements (imports,
    # helpers) as setup, except the METADATA bookkeeping.
    keep = [
        ast.get_source_segment(test, n)
        for n in tree.body
        if n is not check and not (isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "METADATA")
    ]
    return "\n".join(s for s in keep if s), asserts_src, first


def humaneval_problem(
    r: dict[str, Any], where: str, *, id_prefix: str, fallback_check: str | None = None
) -> ProblemSpec:
    task_id = field_of(r, "task_id", str, where)
    prompt = field_of(r, "prompt", str, where)
    entry_point = field_of(r, "entry_point", str, where)
    test = field_of(r, "test", str, where)
    prefix, signature = code_prefix(prompt, entry_point, where)
    if fallback_check is None:
        setup_code, private, first_assert = split_check(test, entry_point, where)
    else:
        # HumanEval+ OriginFmt: check is a loop over inlined inputs (megabytes; parsing it costs seconds), so
        # it runs whole, and the original HumanEval check gives the public fallback.
        if not re.search(r"^def check\(", test, flags=re.MULTILINE):
            raise DataError(f"{where}: the test code must define check(candidate)")
        setup_code, private = test, [f"check({entry_point})"]
        first_assert = split_check(fallback_check, entry_point, where)[2]
    del first_assert  # the rule below never takes a test of check: it would show a hidden test
    wrong = WRONG_EXAMPLES.get(task_id, set())
    shown = [t for t in docstring_examples(signature, entry_point) if t not in wrong]
    meta: dict[str, Any] = {}  # public_source: absent = parsed from the docstring
    if not shown and task_id in PROSE_EXAMPLES:
        meta["public_source"], shown = PROSE_EXAMPLES[task_id][0], list(PROSE_EXAMPLES[task_id][1])
    if not shown:
        raise DataError(f"{where}: {task_id} has no docstring example to use as its public test (add one to "
                        "PROSE_EXAMPLES in app/datasets/humaneval.py)")
    for test in shown:
        problem = public_test_problem(test, entry_point)
        if problem:
            raise DataError(f"{where}: {task_id}: {test!r} cannot be a public test: {problem}")
    number = task_id.rsplit("/", 1)[-1]
    return ProblemSpec(
        external_id=f"{id_prefix}/{number}",
        split="test",
        prompt=prompt,
        entry_point=entry_point,
        reference_solution=field_of(r, "canonical_solution", str, where),
        shown_tests=shown,
        public_tests=shown[:1],
        private_tests=private,
        code_prefix=prefix,
        setup_code=setup_code,
        meta={"task_id": task_id, **meta},
    )


def load_humaneval(data_dir: Path) -> ParsedDataset:
    path = require_file(data_dir, HUMANEVAL_FILE)
    problems = [humaneval_problem(r, f"{path}, line {n}", id_prefix="HumanEval") for n, r in read_jsonl(path)]
    _check_unique(problems, path)
    return ParsedDataset("humaneval", path, sha256_files([path]), problems)


def load_humaneval_plus(data_dir: Path) -> ParsedDataset:
    """HumanEval+ v0.1.10, original format; the original HumanEval ``check`` gives the public fallback."""
    path = require_file(data_dir, HUMANEVAL_PLUS_FILE)
    base_path = require_file(data_dir, HUMANEVAL_FILE)
    base = {
        field_of(r, "task_id", str, f"{base_path}, line {n}"): r.get("test") for n, r in read_jsonl(base_path)
    }
    problems = []
    for n, r in read_jsonl(path):
        where = f"{path}, line {n}"
        task_id = field_of(r, "task_id", str, where)
        if task_id not in base:
            raise DataError(f"{where}: {task_id} is not in {base_path}")
        p = humaneval_problem(r, where, id_prefix="HumanEvalPlus", fallback_check=base[task_id])
        if task_id in HUMANEVAL_PLUS_BROKEN:
            p.meta["upstream_broken"] = HUMANEVAL_PLUS_BROKEN[task_id]
        problems.append(p)
    _check_unique(problems, path)
    return ParsedDataset("humaneval_plus", path, sha256_files([path, base_path]), problems)


def _check_unique(problems: list[ProblemSpec], path: Path) -> None:
    ids = [p.external_id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: duplicate task_id {dup}")
