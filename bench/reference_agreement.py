"""Agreement of mucode's stored labels with the µCode reference harness, on stored candidates.

Every executed candidate of the selected collections is judged again the way the reference code judges it: one
script per test group -- the 16 import lines, the problem's code prefix (HumanEval's imports and helpers), the
program, the setup code, the group's asserts, then a sentinel print -- run by a fresh ``python3`` interpreter with
a 10 s wall-clock limit; the group passes iff the sentinel reaches stdout. MBPP groups are the reference's:
train problems check all ``test_list`` asserts as public tests and only the challenge list as private ones (as the
repr of a list, so it never runs: bug B1); the other splits check ``test_list[0]`` as public, the rest privately.
The reference's label (its ``success``) is public AND private; mucode's stored labels are compared with it
(``public_passed`` with the public group, ``private_passed`` with the label).

Every disagreement is attributed to a named deviation, found by judging the candidate again with mucode's
current sandbox under variations, and with variations of the reference script:

- ``prelude``: the stored verdict was made without the import prelude (a collection from before it, or one with
  ``harness.import_prelude`` off); mucode with the prelude agrees with the reference.
- ``challenge tests run (B1 fixed)``: mucode runs MBPP's challenge asserts as tests; without them it agrees.
- ``__main__ block``: mucode loads the program as a module (``__name__ != "__main__"``), the reference runs it as
  a script; without its ``if __name__ == "__main__":`` block the reference agrees with mucode.
- ``forgery-proof judge``: the tests compared a value that is not plain data (mucode's judge refuses it).
- ``timeout semantics``: one side ran out of time (mucode: 10 s for the whole suite, CPU and wall clock;
  the reference: 10 s wall clock per group).
- ``shown tests: first``: the collection checked only the first public test (``rollout.train_shown_tests``).
- ``sandbox changed since stored``: mucode's current sandbox, with the stored harness, no longer gives the
  stored verdict (and then agrees with the reference).
- ``unexplained``: none of the above; listed one by one, to investigate.

The reference scripts run on this host -- there is no sandbox in the reference -- but in an empty network
namespace as the unprivileged user ``nobody`` when this runs as root (that changes no verdict: no program of a
code benchmark needs the network or root).

    python bench/reference_agreement.py --database-url sqlite:////tmp/refagree/mucode.db --collection refagree-mbpp
    python bench/reference_agreement.py --experiment demo [--round 0] [--limit 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REFERENCE_TIMEOUT_S = 10.0
TIMEOUT_TEXT = "Code execution timed out"
CAUSES = (
    "prelude",
    "challenge tests run (B1 fixed)",
    "__main__ block",
    "forgery-proof judge",
    "timeout semantics",
    "shown tests: first",
    "sandbox changed since stored",
    "unexplained",
)


# -- the reference's scripts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Groups:
    """The reference's test groups for one problem: (public, private) code; private None = no private code."""

    public: str
    private: str | None


def reference_groups(item) -> Groups:
    """The reference's public and private test code for a stored candidate's problem (``StoredVerdict``)."""
    p = item.problem
    setup = p.setup_code or ""
    if item.dataset == "mbpp":
        n_challenge = int(item.problem_meta.get("challenge_tests", 0))
        tests = list(p.private_tests[: len(p.private_tests) - n_challenge])
        challenge = list(p.private_tests[len(p.private_tests) - n_challenge:])
        if item.split == "train":  # mbpp_train env: all asserts public, the challenge list private (never runs)
            public, private = tests, ([repr(challenge)] if challenge else None)
        else:  # mbpp env: the first assert public, the rest (and the challenge list's repr) private
            public, private = tests[:1], tests[1:] + ([repr(challenge)] if challenge else [])
    else:  # other datasets: mucode's own suites, run the reference's way
        public, private = list(p.public_tests), list(p.private_tests)
    join = "\n".join
    return Groups(join([setup, *public]), join([setup, *private]) if private else None)


def reference_script(prefix: str, code: str, tests: str, sentinel: str) -> str:
    from app.sandbox.prelude import PRELUDE

    return f"{PRELUDE}{prefix}\n{code}\n{tests}\nprint({sentinel!r})\n"


def without_main_block(code: str) -> str | None:
    """The program without its top-level ``if __name__ == "__main__":`` blocks (None: it has none)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None

    def is_main(node: ast.stmt) -> bool:
        return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(
            node.test)

    if not any(is_main(n) for n in tree.body):
        return None
    tree.body = [n for n in tree.body if not is_main(n)] or [ast.Pass()]
    return ast.unparse(tree)


@dataclass
class RefResult:
    passed: bool
    timed_out: bool
    stderr: str


class ReferenceRunner:
    """Runs reference scripts: ``python3 FILE`` in a fresh process, 10 s wall clock, sentinel in stdout."""

    def __init__(self, timeout: float = REFERENCE_TIMEOUT_S, python: str = sys.executable) -> None:
        self.timeout = timeout
        self.python = python
        self.tmp = Path(tempfile.mkdtemp(prefix="mucode-refagree-"))
        self.wrap: list[str] = []
        if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
            os.chmod(self.tmp, 0o1777)  # noqa: S103 - a scratch folder the unprivileged harness user writes to
            self.wrap = ["unshare", "--net", "--", "setpriv", "--reuid", "65534", "--regid", "65534",
                         "--clear-groups", "--"]

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, prefix: str, code: str, tests: str) -> RefResult:
        sentinel = f"Code passed all tests {uuid.uuid4().hex}"
        work = Path(tempfile.mkdtemp(dir=self.tmp))
        os.chmod(work, 0o777)  # noqa: S103 - a scratch folder the unprivileged harness user writes to
        path = work / "program.py"
        path.write_text(reference_script(prefix, code, tests, sentinel), encoding="utf-8")
        os.chmod(path, 0o644)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([*self.wrap, self.python, str(path)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=self.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
            timed_out = True
        finally:
            shutil.rmtree(work, ignore_errors=True)
        passed = not timed_out and sentinel.encode() in out
        return RefResult(passed, timed_out, TIMEOUT_TEXT if timed_out else err.decode("utf-8", "replace")[-2000:])


# -- one candidate --------------------------------------------------------------------------------------------------
@dataclass
class Judged:
    item: Any
    harness: Any
    stored: dict[str, bool]  # kind -> stored label
    ref: dict[str, bool] = field(default_factory=dict)  # public, private (= the reference's success label)
    ref_timeout: bool = False
    ref_nomain: dict[str, bool] = field(default_factory=dict)
    mucode: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> kind -> ExecutionResult
    causes: dict[str, str] = field(default_factory=dict)  # kind -> cause (disagreements only)


def judge_reference(runner: ReferenceRunner, j: Judged) -> None:
    item = j.item
    groups = reference_groups(item)
    prefix = item.problem.code_prefix or ""

    def label(code: str) -> tuple[bool, bool, bool]:
        pub = runner.run(prefix, code, groups.public)
        priv = runner.run(prefix, code, groups.private) if groups.private is not None else None
        timed = pub.timed_out or (priv is not None and priv.timed_out)
        return pub.passed, pub.passed and (priv is None or priv.passed), timed

    pub, success, j.ref_timeout = label(item.code)
    j.ref = {"public": pub, "private": success}
    stripped = without_main_block(item.code)
    if stripped is not None and any(j.ref[k] != j.stored[k] for k in j.ref):
        pub2, success2, _ = label(stripped)
        j.ref_nomain = {"public": pub2, "private": success2}


def mucode_variants(j: Judged) -> dict[str, tuple[Any, bool]]:
    """The variants of the problem (as mucode judges it) to re-judge with: name -> (problem-like, prelude)."""
    from app.harness import Harness

    item, h = j.item, j.harness
    stored_view = h.view(item.problem)
    out = {"stored_harness": (stored_view, h.import_prelude),
           "prelude": (Harness(import_prelude=True, shown_tests="all").view(item.problem), True)}
    n_challenge = int(item.problem_meta.get("challenge_tests", 0))
    if item.dataset == "mbpp" and n_challenge:
        p = item.problem
        out["prelude_no_challenge"] = (replace(p, private_tests=list(p.private_tests[:-n_challenge])), True)
    return out


def attribute(j: Judged) -> None:
    """A cause for each kind whose stored label differs from the reference's (see the module docstring)."""
    for kind in ("public", "private"):
        stored, ref = j.stored[kind], j.ref[kind]
        if stored == ref:
            continue
        m = {name: res[kind] for name, res in j.mucode.items()}
        now = m["stored_harness"]
        if kind == "public" and j.harness.shown_tests == "first" and len(j.item.problem.public_tests) > 1:
            cause = "shown tests: first"
        elif now.passed != stored and now.passed == ref:
            cause = "sandbox changed since stored"
        elif not j.harness.import_prelude and m["prelude"].passed == ref:
            cause = "prelude"
        elif kind == "private" and "prelude_no_challenge" in m and m["prelude_no_challenge"].passed == ref \
                and m["prelude"].passed != ref:
            cause = "challenge tests run (B1 fixed)"
        elif j.ref_nomain and j.ref_nomain[kind] == stored:
            cause = "__main__ block"
        elif j.ref_timeout or now.status == "timeout":
            cause = "timeout semantics"
        elif "only None, bool, int, float" in (now.feedback or ""):
            cause = "forgery-proof judge"
        else:
            cause = "unexplained"
        j.causes[kind] = cause


# -- main -------------------------------------------------------------------------------------------------------------
def select_items(store, args) -> tuple[list[Any], dict[tuple[str, int], Any], list[str]]:
    """(stored verdicts, {owner: harness}, descriptions) of the selected collections."""
    from app.harness import Harness
    from app.store.rollouts import Owner
    from workers.collect import get_spec

    evaluation_ids, round_ids, what = [], [], []
    for name in args.collection or []:
        ev = store.get_evaluation(name)
        evaluation_ids.append(ev.id)
        what.append(f"collection {ev.name} ({ev.mode}, {ev.dataset}{':' + ev.split if ev.split else ''})")
    if args.experiment:
        exp = store.get_experiment(args.experiment)
        rounds = [r for r in store.experiment_rounds(exp.id) if args.round is None or r.index == args.round]
        if not rounds:
            raise SystemExit(f"experiment {exp.name} has no round {args.round}")
        round_ids += [r.id for r in rounds]
        what.append(f"experiment {exp.name}, rounds {[r.index for r in rounds]} (training rollouts)")
    if not evaluation_ids and not round_ids:
        raise SystemExit("select what to re-judge: --collection NAME (repeatable) and/or --experiment NAME")
    harness: dict[tuple[str, int], Any] = {}
    for key, ids in (("evaluation_id", evaluation_ids), ("round_id", round_ids)):
        for i in ids:
            try:
                harness[(key, i)] = get_spec(store, Owner(**{key: i}))[0].harness
            except Exception:  # noqa: BLE001 - a collection without a job row: the legacy harness
                harness[(key, i)] = Harness.legacy()
    items = store.stored_verdicts(evaluation_ids=evaluation_ids, round_ids=round_ids, limit=args.limit)
    return items, harness, what


def progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
    except ImportError:  # pragma: no cover
        return iterable


def run_reference(by_key: dict[tuple[int, str], list[Judged]], args) -> float:
    """The reference harness once per distinct (problem, code); the verdicts are shared by the group."""
    t0 = time.perf_counter()
    runner = ReferenceRunner(timeout=args.timeout)
    firsts = [group[0] for group in by_key.values()]
    try:
        with ThreadPoolExecutor(args.workers) as pool:
            for _ in progress(pool.map(lambda j: judge_reference(runner, j), firsts), len(firsts),
                              "reference harness"):
                pass
    finally:
        runner.close()
    for group in by_key.values():
        for j in group[1:]:
            j.ref, j.ref_timeout, j.ref_nomain = group[0].ref, group[0].ref_timeout, group[0].ref_nomain
    return time.perf_counter() - t0


def run_mucode_sandbox(by_key: dict[tuple[int, str], list[Judged]], args) -> tuple[float, int]:
    """mucode's current sandbox: the stored harness, the prelude, and MBPP without its challenge asserts."""
    from app.sandbox import Limits, Sandbox

    t0 = time.perf_counter()
    firsts = [group[0] for group in by_key.values()]
    work: dict[bool, list[tuple[Judged, str, str, Any]]] = {False: [], True: []}
    for j in firsts:
        for name, (problem, prelude) in mucode_variants(j).items():
            for kind in ("public", "private"):
                work[prelude].append((j, name, kind, problem))
    with Sandbox(workers=args.workers, limits=Limits(timeout_s=args.timeout)) as sb:
        for prelude, jobs in work.items():
            chunk = 256
            bar = progress(range(0, len(jobs), chunk), (len(jobs) + chunk - 1) // chunk,
                           f"mucode sandbox ({'prelude' if prelude else 'no prelude'}, x{chunk})")
            for start in bar:
                part = jobs[start:start + chunk]
                results = sb.run_many([(p, j.item.code, kind) for j, _, kind, p in part], prelude=prelude)
                for (j, name, kind, _), r in zip(part, results):
                    if r.status == "sandbox_error":
                        raise SystemExit(f"the sandbox failed: {r.feedback}")
                    j.mucode.setdefault(name, {})[kind] = r
    for group in by_key.values():
        for j in group[1:]:
            j.mucode = group[0].mucode
    return time.perf_counter() - t0, sum(len(v) for v in work.values())


def print_agreement(judged: list[Judged]) -> dict[str, Any]:
    """The agreement table, the direction of each flip, and the unexplained disagreements."""
    print(f"\n{'label':<10}{'candidates':>11}{'agree':>8}{'raw %':>8}   disagreements by cause"
          f"{'':<20}{'after named %':>14}")
    summary: dict[str, Any] = {}
    for kind in ("public", "private"):
        n = len(judged)
        agree = sum(j.stored[kind] == j.ref[kind] for j in judged)
        causes = Counter(j.causes[kind] for j in judged if kind in j.causes)
        named = sum(v for c, v in causes.items() if c != "unexplained")
        text = ", ".join(f"{c}: {v}" for c, v in sorted(causes.items(), key=lambda kv: -kv[1])) or "none"
        print(f"{kind:<10}{n:>11}{agree:>8}{100 * agree / n:>7.1f}%   {text:<42}{100 * (agree + named) / n:>13.1f}%")
        summary[kind] = {"candidates": n, "agree": agree, "causes": dict(causes),
                         "agreement_raw": agree / n, "agreement_after_named": (agree + named) / n}
    flips = Counter((kind, j.stored[kind], j.ref[kind]) for j in judged for kind in j.causes)
    if flips:
        print("\ndirection (label: mucode stored -> reference): " + ", ".join(
            f"{k} {'pass' if a else 'fail'}->{'pass' if b else 'fail'}: {v}" for (k, a, b), v in sorted(flips.items())))
    unexplained = [(j, k) for j in judged for k, c in j.causes.items() if c == "unexplained"]
    for j, kind in unexplained[:20]:
        r = j.mucode["stored_harness"][kind]
        print(f"\nUNEXPLAINED candidate {j.item.candidate_id} {j.item.problem.external_id} {kind}: stored "
              f"{j.stored[kind]}, reference {j.ref[kind]}, mucode now {r.status}\n  code: "
              f"{j.item.code[:300]!r}\n  mucode feedback: {r.feedback[:300]!r}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", default=None, help="the store (default: MUCODE_DATABASE_URL / settings)")
    ap.add_argument("--collection", action="append", help="an evaluation or standalone collection, by name")
    ap.add_argument("--experiment", default=None, help="an experiment: its rounds' training rollouts")
    ap.add_argument("--round", type=int, default=None, help="with --experiment: only round K")
    ap.add_argument("--limit", type=int, default=None, help="the first N executed candidates")
    ap.add_argument("--workers", type=int, default=2, help="reference scripts and sandbox programs in parallel")
    ap.add_argument("--timeout", type=float, default=REFERENCE_TIMEOUT_S, help="the reference's wall-clock limit")
    ap.add_argument("--json", type=Path, default=None, help="write every candidate's verdicts and cause here")
    args = ap.parse_args(argv)

    from app.sandbox import SANDBOX_VERSION
    from app.store import Store

    url = args.database_url
    if url is None:
        from app.config import get_settings

        url = get_settings().database_url
    store = Store(url)
    items, harness, what = select_items(store, args)
    print(f"store: {store.engine.url.render_as_string(hide_password=True)}")
    print("selected: " + "; ".join(what))
    print(f"executed candidates: {len(items)}; harness of each collection: "
          + ", ".join(f"{k[0].split('_')[0]} {k[1]}: {h.tag or 'legacy (no prelude)'}" for k, h in harness.items()))
    if not items:
        return 1
    judged = []
    for it in items:
        h = harness[("evaluation_id", it.evaluation_id) if it.evaluation_id is not None else ("round_id", it.round_id)]
        judged.append(Judged(it, h, {"public": it.public_passed, "private": it.private_passed}))

    by_key: dict[tuple[int, str], list[Judged]] = defaultdict(list)
    for j in judged:
        by_key[(j.item.problem.id, j.item.code_hash)].append(j)
    ref_s = run_reference(by_key, args)
    mucode_s, runs = run_mucode_sandbox(by_key, args)
    for j in judged:
        attribute(j)
    print(f"\nreference harness: {len(by_key)} distinct (problem, program) pairs, {ref_s:.0f} s; mucode sandbox "
          f"{SANDBOX_VERSION}: {runs} runs, {mucode_s:.0f} s")
    summary = print_agreement(judged)
    if args.json:
        rows = [{"candidate_id": j.item.candidate_id, "problem": j.item.problem.external_id,
                 "stored": j.stored, "reference": j.ref, "reference_timeout": j.ref_timeout,
                 "mucode": {name: {k: r.status for k, r in res.items()} for name, res in j.mucode.items()},
                 "causes": j.causes} for j in judged]
        args.json.write_text(json.dumps({"summary": summary, "candidates": rows}, indent=1))
        print(f"\nwrote {args.json}")
    store.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
