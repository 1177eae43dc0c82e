"""HumanEval and HumanEval+ (EvalPlus OriginFmt).

Protocol (DESIGN.md): the prompt field is the problem; the code prefix is the prompt up to
``def <entry_point>`` (imports and helper functions the candidate may rely on). Public = one docstring example
turned into an assert (doctest ``>>>`` lines and inline forms such as ``f(1) ==> 2``); when none can be
derived, the first assert of ``check`` that stands alone, else the whole ``check`` (recorded in
``meta["public_fallback"]``).
Shown = every derivable docstring example (the reference showed the whole example block). Private = the full
``check``: its body split into top-level asserts when it is only asserts, else ``check(<entry_point>)`` with
the test module as setup code.
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

HUMANEVAL_FILE = "humaneval/HumanEval.jsonl"
HUMANEVAL_PLUS_FILE = "evalplus/HumanEvalPlus-OriginFmt-v0.1.10.jsonl.gz"

# Known upstream defects of the loaded data (shared/data/README.md); the sandbox's reference-solution test
# skips them. Keyed by task id.
HUMANEVAL_PLUS_BROKEN = {
    "HumanEval/32": "OriginFmt oracle calls _poly(*candidate(*inp), inp): every solution fails (EvalPlus)",
}

# Docstring lines that read like examples but contradict the reference solution and the hidden tests
# (upstream typos, and a recurrence definition); never used as shown or public tests.
WRONG_EXAMPLES = {
    "HumanEval/47": {"assert median([-10, 4, 6, 1000, 10, 20]) == 15.0"},
    "HumanEval/130": {"assert tri(1) == 3", "assert tri(4) == 3"},
    "HumanEval/148": {"assert bf('Earth', 'Mercury') == 'Venus'"},
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
            example = _as_assert(line[3:], " ".join(out), entry_point) if out else None
        else:
            example = _inline_example(line.lstrip("*-• ").strip(), entry_point)
        if example and example not in found:
            found.append(example)
    return found


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
    wrong = WRONG_EXAMPLES.get(task_id, set())
    shown = [t for t in docstring_examples(signature, entry_point) if t not in wrong]
    meta: dict[str, Any] = {}
    if not shown:
        shown, meta["public_fallback"] = [first_assert], True
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
