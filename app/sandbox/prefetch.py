"""Sending a test's calls of the program ahead of the test: the rewriting of the suite's trees that does it.

A call of the program is a round trip to the candidate's process. Two rewritings let the judge make many of
them at once without changing what the tests do: the module-level asserts' calls with literal arguments,
``f(<literals>)``, read answers fetched in one batch before the tests run (``prefetch_sites``); and a loop
that calls ``f(x)`` for each item of a named list first thing in each iteration sends its calls ahead of
itself (``map_loops``: ``Conn.map_start`` and ``Conn.mapped`` in ``app.sandbox.remote`` read their answers).
Either way the program makes the same calls in the same order as the tests would, only sooner; a call the
rewriting cannot prove to be one of those is made normally. ``app.sandbox.suite`` applies both once per
suite.
"""

from __future__ import annotations

import ast
from typing import Any

PREFETCH = "__mucode_prefetched__"
MAP, MAPPED = "__mucode_map__", "__mucode_mapped__"


def _literal(node: ast.AST) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _literal_call(node: ast.Call) -> tuple[Any, ...] | None:
    """(name, args, kwargs) of ``name(<literals>)``."""
    if not isinstance(node.func, ast.Name) or any(isinstance(a, ast.Starred) for a in node.args) \
            or any(k.arg is None for k in node.keywords):
        return None
    args, kwargs = [], {}
    for a in node.args:
        good, v = _literal(a)
        if not good:
            return None
        args.append(v)
    for kw in node.keywords:
        good, v = _literal(kw.value)
        if not good:
            return None
        kwargs[kw.arg] = v
    return node.func.id, tuple(args), kwargs


def _collect_calls(node: ast.AST | None, out: list[tuple[ast.Call, tuple[Any, ...]]],
                   eligible: Any = _literal_call) -> None:
    """Calls accepted by ``eligible`` that evaluating ``node`` makes exactly once, whatever the values (no
    short-circuit branch, loop, comprehension or lambda), in evaluation order."""
    if node is None:
        return
    if isinstance(node, ast.Call):
        site = eligible(node)
        if site is not None:
            out.append((node, site))
            return
        if not isinstance(node.func, ast.Name):
            _collect_calls(node.func, out, eligible)
        for a in node.args:
            _collect_calls(a.value if isinstance(a, ast.Starred) else a, out, eligible)
        for kw in node.keywords:
            _collect_calls(kw.value, out, eligible)
    elif isinstance(node, ast.Compare):
        _collect_calls(node.left, out, eligible)
        _collect_calls(node.comparators[0], out, eligible)  # a chain stops early: only its first pair is sure
    elif isinstance(node, ast.BoolOp):
        _collect_calls(node.values[0], out, eligible)
    elif isinstance(node, ast.UnaryOp):
        _collect_calls(node.operand, out, eligible)
    elif isinstance(node, ast.BinOp):
        _collect_calls(node.left, out, eligible)
        _collect_calls(node.right, out, eligible)
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for e in node.elts:
            _collect_calls(e.value if isinstance(e, ast.Starred) else e, out, eligible)
    elif isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            _collect_calls(k, out, eligible)
            _collect_calls(v, out, eligible)
    elif isinstance(node, ast.Subscript):
        _collect_calls(node.value, out, eligible)
        _collect_calls(node.slice, out, eligible)
    elif isinstance(node, ast.Attribute):
        _collect_calls(node.value, out, eligible)
    elif isinstance(node, ast.IfExp):
        _collect_calls(node.test, out, eligible)
    elif isinstance(node, ast.Slice):
        for part in (node.lower, node.upper, node.step):
            _collect_calls(part, out, eligible)


class _UsePrefetched(ast.NodeTransformer):
    def __init__(self, numbers: dict[int, int]) -> None:
        self.numbers = numbers

    def visit_Call(self, node: ast.Call) -> ast.AST:
        k = self.numbers.get(id(node))
        if k is None:
            return self.generic_visit(node)
        new = ast.Call(func=ast.copy_location(ast.Name(id=PREFETCH, ctx=ast.Load()), node),
                       args=[ast.copy_location(ast.Constant(k), node), node.func, *node.args],
                       keywords=node.keywords)
        return ast.copy_location(new, node)


def prefetch_sites(test: str, first: int, bound: set[str]) -> tuple[ast.Module, list[Any]]:
    """Rewrite the module-level asserts of one test so their ``name(<literals>)`` calls read answers fetched
    in one batch; returns the test's tree (rewritten where a call was found) and the (name, args, kwargs) of
    each call.
    The calls are made in the same order as the test would make them; a call whose name turns out not to be
    the program's (a builtin, a helper of the tests) is made normally."""
    tree = ast.parse(test)
    found: list[tuple[ast.Call, tuple[Any, ...]]] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assert):
            _collect_calls(stmt.test, found)
    found = [(node, site) for node, site in found if site[0] not in bound and site[0] != PREFETCH]
    map_loops(tree.body)
    if not found:
        return tree, []
    numbers = {id(node): first + i for i, (node, _) in enumerate(found)}
    return _UsePrefetched(numbers).visit(tree), [site for _, site in found]


def _loop_sources(target: ast.AST, it: ast.AST, out: dict[str, str]) -> None:
    """Loop variables bound to the items of a named list: ``for x in xs``, ``for x, y in zip(xs, ys)``,
    ``for i, (x, y) in enumerate(zip(xs, ys))``: {"x": "xs", "y": "ys"}."""
    if isinstance(target, ast.Name) and isinstance(it, ast.Name):
        out[target.id] = it.id
    elif isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and not it.keywords \
            and isinstance(target, ast.Tuple) and not any(isinstance(a, ast.Starred) for a in it.args):
        if it.func.id == "zip" and len(target.elts) == len(it.args):
            for t, a in zip(target.elts, it.args):
                _loop_sources(t, a, out)
        elif it.func.id == "enumerate" and len(it.args) == 1 and len(target.elts) == 2:
            _loop_sources(target.elts[1], it.args[0], out)


def _breaks(body: list[ast.stmt]) -> bool:
    """Whether a ``break`` of this loop (not of a loop nested in it) is in ``body``."""
    todo = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Break):
            return True
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.expr)):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return False


class _UseMapped(ast.NodeTransformer):
    def __init__(self, site: ast.Call, star: bool) -> None:
        self.site, self.star = site, star

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if node is not self.site:
            return self.generic_visit(node)
        item = node.args[0].value if self.star else node.args[0]
        new = ast.Call(func=ast.Name(id=MAPPED, ctx=ast.Load()), keywords=[],
                       args=[node.func, item, ast.Constant(self.star)])
        return ast.fix_missing_locations(ast.copy_location(new, node))


_PLAIN_NODES = (ast.Name, ast.Constant, ast.Starred, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.UnaryOp,
                ast.BinOp, ast.expr_context, ast.unaryop, ast.operator)


def _evaluated_first(node: ast.AST) -> list[ast.AST]:
    """The parts of ``node`` that are certainly evaluated, in order (as in ``_collect_calls``)."""
    if isinstance(node, ast.Call):
        return [node.func] + [a.value if isinstance(a, ast.Starred) else a for a in node.args] \
            + [k.value for k in node.keywords]
    if isinstance(node, ast.Compare):
        return [node.left, node.comparators[0]]
    if isinstance(node, ast.BoolOp):
        return node.values[:1]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value if isinstance(e, ast.Starred) else e for e in node.elts]
    if isinstance(node, ast.Dict):
        return [x for kv in zip(node.keys, node.values) for x in kv if x is not None]
    if isinstance(node, ast.Subscript):
        return [node.value, node.slice]
    if isinstance(node, ast.Attribute):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return [node.test]
    return []


def _first_call(node: ast.AST, site: ast.Call) -> bool | None:
    """Whether ``site`` is the first call ``node`` makes: everything evaluated before it is names, constants
    and operators on them (no call, attribute or item access that could reach the program). None: not
    found."""
    if node is site:
        return True
    parts = _evaluated_first(node)
    for i, part in enumerate(parts):
        found = _first_call(part, site)
        if found is not None:
            return found and all(isinstance(n, _PLAIN_NODES) for p in parts[:i] for n in ast.walk(p))
    return None


def _map_loop(loop: ast.For) -> bool:
    """Rewrite ``for <vars> in <named lists>: <first statement calling f(*x) or f(x)>`` so the loop's calls
    are sent to the program ahead of the loop (``Conn.map_start``) and each call reads its answer
    (``Conn.mapped``). The call must be made exactly once per iteration, first among the program's calls (the
    first statement, outside any branch), and the loop has no ``break``: the program then makes the same calls
    in the same order as the loop would, only sooner (with the items as they are when sent: a loop that
    changed its later items as it went would not be rewritten correctly; none of the datasets' does). EvalPlus
    checks are such loops, over hundreds of inputs."""
    sources: dict[str, str] = {}
    _loop_sources(loop.target, loop.iter, sources)
    if not sources or not loop.body or _breaks(loop.body):
        return False
    first = loop.body[0]
    fields = {ast.Expr: "value", ast.Assert: "test", ast.Assign: "value", ast.AnnAssign: "value"}
    expr = fields.get(type(first))
    if expr is None:
        return False
    bound = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}

    def eligible(call: ast.Call) -> tuple[str, str, bool] | None:
        if (not isinstance(call.func, ast.Name) or call.func.id in bound or call.keywords
                or len(call.args) != 1):
            return None
        arg = call.args[0]
        star = isinstance(arg, ast.Starred)
        name = arg.value if star else arg
        if isinstance(name, ast.Name) and name.id in sources:
            return call.func.id, name.id, star
        return None

    calls: list[tuple[ast.Call, tuple[Any, ...]]] = []
    _collect_calls(getattr(first, expr), calls, eligible)
    if not calls or not _first_call(getattr(first, expr), calls[0][0]):
        return False
    site, (fn, item, star) = calls[0]
    setattr(first, expr, _UseMapped(site, star).visit(getattr(first, expr)))

    def thunk(name: str) -> ast.Lambda:
        no_args = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
        return ast.Lambda(args=no_args, body=ast.Name(id=name, ctx=ast.Load()))

    loop.iter = ast.fix_missing_locations(ast.copy_location(ast.Call(
        func=ast.Name(id=MAP, ctx=ast.Load()), keywords=[],
        args=[thunk(fn), thunk(sources[item]), ast.Constant(star), loop.iter]), loop.iter))
    return True


def map_loops(body: list[ast.stmt]) -> bool:
    """``_map_loop`` on every for loop among these statements, at any depth of statements (function bodies,
    branches; never inside expressions, so the inputs' literals are not walked); True when one changed."""
    changed = False
    for stmt in body:
        if isinstance(stmt, ast.For):
            changed |= _map_loop(stmt)
        for name in ("body", "orelse", "finalbody"):
            sub = getattr(stmt, name, None)
            if isinstance(sub, list):
                changed |= map_loops(sub)
        for handler in getattr(stmt, "handlers", None) or []:
            changed |= map_loops(handler.body)
    return changed
