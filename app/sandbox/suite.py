"""Compiling a suite's trusted code once, in the executor, for every judge that runs it.

The problem's prefix, its setup code and each test statement become marshalled code objects, with the test
loops and asserts rewritten to send their calls ahead (``app.sandbox.prefetch``), and the names the suite's
bytecode reads and binds: a global of the program is put in the tests' namespace only under a name the
suite reads and does not bind itself (never a builtin's, the entry point excepted), so it never replaces a
builtin or a name of the suite.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dis
import marshal
import types
from typing import Any

from app.sandbox.prefetch import map_loops, prefetch_sites

BUILTIN_NAMES = frozenset(vars(builtins))
# Names that look globals up by a string the tests' names cannot show: with one of them in a suite, every
# program global not shadowing a builtin or a name of the suite is put in the tests' namespace.
_DYNAMIC_LOOKUP = frozenset({"eval", "exec", "globals", "vars", "locals", "dir", "__import__"})


def _bound_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _runs_calls(tree: ast.Module) -> bool:
    """Whether running the module calls anything (outside function and class bodies)."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Call):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(node.decorator_list if not isinstance(node, ast.Lambda) else [])
            todo.extend(d for d in (node.args.defaults + node.args.kw_defaults) if d is not None)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return False


_OP = dis.opmap
_EXTENDED_ARG, _LOAD_GLOBAL = _OP["EXTENDED_ARG"], _OP["LOAD_GLOBAL"]
_READS = frozenset(_OP[n] for n in ("LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS") if n in _OP)
_BINDS = frozenset({_OP["STORE_NAME"], _OP["DELETE_NAME"]})
_BINDS_GLOBAL = frozenset({_OP["STORE_GLOBAL"], _OP["DELETE_GLOBAL"]})


def global_names(code: types.CodeType, reads: set[str], binds: set[str]) -> None:
    """The names a module's code reads from its globals (``reads``, builtins included) and binds there
    (``binds``), from its bytecode: what the interpreter will look up, in functions and class bodies too.
    Reads the instructions' bytes directly (``dis.get_instructions`` is 15x slower on the EvalPlus suites)."""
    todo = [(code, True)]
    while todo:
        co, module = todo.pop()
        raw, names, ext = co.co_code, co.co_names, 0
        for i in range(0, len(raw), 2):
            op, arg = raw[i], raw[i + 1] | ext
            if op == _EXTENDED_ARG:
                ext = arg << 8
                continue
            ext = 0
            if op == _LOAD_GLOBAL:
                reads.add(names[arg >> 1])  # the low bit: whether a NULL is pushed too
            elif op in _READS:
                reads.add(names[arg])
            elif op in _BINDS_GLOBAL or (module and op in _BINDS):  # a class body's STORE_NAME is its own
                binds.add(names[arg])
        todo.extend((c, False) for c in co.co_consts if isinstance(c, types.CodeType))


def compile_suite(prefix: str, setup: str, tests: list[str], entry_point: str | None = None
                  ) -> dict[str, Any]:
    """Compile the trusted code once (in the executor) for every judge: marshalled code objects, the calls
    to fetch in one batch, and which of the program's globals the tests may see (``names``: those the suite
    reads and does not bind itself, none named like a builtin but the entry point; None where the suite looks
    names up by string)."""
    def comp(src: str, name: str) -> bytes | str | None:
        if not src.strip():
            return None
        try:
            return marshal.dumps(compile(src, name, "exec", dont_inherit=True))
        except SyntaxError as exc:
            return f"the {name.strip('<>')} code does not compile: SyntaxError: {exc.msg} (line {exc.lineno})"

    imports = setup_imports(setup)
    out: dict[str, Any] = {"prefix": comp(prefix, "<prefix>"), "setup": comp(setup, "<setup>"), "tests": [],
                           "sites": [], "pipeline": True, "setup_imports": comp(imports, "<setup>"),
                           # what runs in the program's process
                           "numpy": "numpy" in prefix or "numpy" in imports,
                           "entry_point": (entry_point if isinstance(entry_point, str) and entry_point
                                           else None)}
    bound: set[str] = set()
    if setup.strip() and isinstance(out["setup"], bytes):
        tree = ast.parse(setup)
        bound = _bound_names(tree)
        out["pipeline"] = not _runs_calls(tree)
        with contextlib.suppress(SyntaxError, ValueError, TypeError, RecursionError):
            if map_loops(tree.body):
                out["setup"] = marshal.dumps(compile(tree, "<setup>", "exec", dont_inherit=True))
    for i, t in enumerate(tests):
        name = f"<test {i + 1}>"
        try:
            tree, sites = prefetch_sites(t, len(out["sites"]), bound)
            code = compile(tree, name, "exec", dont_inherit=True)
        except (SyntaxError, RecursionError, ValueError, TypeError, MemoryError):
            try:  # the plain source: its own SyntaxError, or a test too deep for the rewriting
                code, sites = compile(t, name, "exec", dont_inherit=True), []
            except (SyntaxError, ValueError) as exc:  # ValueError: a null byte
                out["tests"].append(f"the test does not compile: {type(exc).__name__}: "
                                    f"{getattr(exc, 'msg', None) or exc}")
                continue
        out["tests"].append(marshal.dumps(code))
        out["sites"].extend(sites)
    reads: set[str] = set()
    binds: set[str] = set()
    for blob in [out["prefix"], out["setup"], *out["tests"]]:
        if isinstance(blob, bytes):
            global_names(marshal.loads(blob), reads, binds)  # noqa: S302 - code objects the executor compiled itself
    entry = out["entry_point"]
    out["bound"] = frozenset(binds)
    out["names"] = None if reads & _DYNAMIC_LOOKUP else sorted(
        n for n in reads - binds
        if not (n.startswith("__") and n.endswith("__")) and (n not in BUILTIN_NAMES or n == entry))
    return out


def setup_imports(setup: str) -> str:
    """The import statements of the setup code: they also run in the program's process, after its code, as
    they would in one file (a program may use a module that only the tests import)."""
    try:
        tree = ast.parse(setup)
    except SyntaxError:
        return ""
    lines = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(lines)
