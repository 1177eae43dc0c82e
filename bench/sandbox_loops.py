"""EvalPlus suites through the sandbox: a test loop's calls sent ahead of it, against one call at a time.

HumanEval+ and MBPP+ check each program with a loop over hundreds of inputs, in the judge; every call of the
program is a request to its process. ``Sandbox(send_ahead=True)`` (the default) sends the loop's calls ahead
(``app.sandbox.prefetch.map_loops``); ``send_ahead=False`` makes each call wait for the previous answer. Both
run the same programs -- the first ``--problems`` reference solutions of each dataset and one wrong completion each
(``bench/sandbox.py``'s ``wrong_function``) -- with the same parallelism, interleaved in rounds; prints
programs/s of each, the ratio, and whether the verdicts agree; also the time programs held a slot (their
``duration_ms``), which a few programs that compute for seconds in both modes do not dominate as they do the
wall time of a batch.

    python bench/sandbox_loops.py [--problems 40] [--workers 2] [--rounds 2] [--timeout 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def programs(n: int) -> list[tuple[object, str, str]]:
    """(problem, program, kind) for the first ``n`` problems of HumanEval+ and MBPP+: reference and wrong."""
    from sandbox import reference_program, wrong_program

    from app.datasets import parse_dataset

    out = []
    for name in ("humaneval_plus", "mbpp_plus"):
        for p in parse_dataset(name).problems[:n]:
            out.append((p, reference_program(p), "reference"))
            wrong = wrong_program(p)
            if wrong is not None:
                out.append((p, wrong, "wrong"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=40, help="first problems of each dataset (default 40)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per program (default 20)")
    args = ap.parse_args(argv)

    from rich.progress import Progress

    from app.sandbox import SANDBOX_VERSION, Limits, Sandbox

    progs = programs(args.problems)
    items = [(p, code, "private") for p, code, _ in progs]
    print(f"programs: {len(items)} ({args.problems} HumanEval+ and {args.problems} MBPP+ problems: reference "
          f"solutions and wrong completions); parallelism {args.workers}; timeout {args.timeout:g} s; "
          f"sandbox {SANDBOX_VERSION}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    limits = Limits(timeout_s=args.timeout)
    modes = {"sent ahead": True, "one at a time": False}
    boxes = {m: Sandbox(workers=args.workers, limits=limits, send_ahead=on).start() for m, on in modes.items()}
    totals = dict.fromkeys(modes, 0.0)
    slot_s: dict[str, list[float]] = {m: [] for m in modes}
    verdicts: dict[str, list[tuple[str, bool]]] = {}
    try:
        for sb in boxes.values():  # warm: suites compiled and sent to the judges, NumPy imported by them
            sb.run_many(items)
        with Progress(transient=True) as bar:
            task = bar.add_task("rounds", total=args.rounds * len(modes))
            for r in range(args.rounds):
                for mode, sb in boxes.items():
                    t0 = time.perf_counter()
                    res = sb.run_many(items)
                    dt = time.perf_counter() - t0
                    totals[mode] += dt
                    verdicts[mode] = [(x.status, x.passed) for x in res]
                    slot_s[mode] += [x.duration_ms / 1000 for x in res]
                    bar.console.print(f"  round {r + 1}: {mode:13s} {len(items) / dt:7.1f} programs/s ({dt:.1f} s)")
                    bar.advance(task)
    finally:
        for sb in boxes.values():
            sb.close()
    rate = {m: args.rounds * len(items) / t for m, t in totals.items()}
    for m in modes:
        print(f"{m:13s}: {rate[m]:7.1f} programs/s")
    print(f"ratio:          {rate['sent ahead'] / rate['one at a time']:6.2f}x")
    held = {m: sum(v) for m, v in slot_s.items()}
    median = {m: sorted(v)[len(v) // 2] * 1000 for m, v in slot_s.items()}
    for m in modes:
        print(f"{m:13s}: programs held a slot {held[m]:7.1f} s in all, median {median[m]:6.1f} ms a program")
    print(f"slot time ratio: {held['one at a time'] / held['sent ahead']:5.2f}x; "
          f"median ratio {median['one at a time'] / median['sent ahead']:5.2f}x")
    a, b = verdicts["sent ahead"], verdicts["one at a time"]
    same = sum(x == y for x, y in zip(a, b))
    print(f"verdicts: passed {sum(p for _, p in a)} / {sum(p for _, p in b)}; same status on {same}/{len(a)}")
    for (p, _, kind), x, y in zip(progs, a, b):
        if x != y:
            print(f"  differ: {p.external_id} ({kind}): sent ahead {x[0]}, one at a time {y[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
