"""Benchmark: `mucode report` on the Postgres store with ~1M candidates that bench/dashboard.py builds.

The store (one experiment, a round per ~80k candidates, each evaluating its generator greedy and Best-of-N on
MBPP test (500 problems) and HumanEval (164)) is built by bench/dashboard.py's builder, into a database of its
own. Then the whole report is timed: resolving the experiment, the per-problem SQL, a bootstrap interval per
cell and the comparison, rendered as markdown (and with --per-turn: an interval per turn). Target: < 2 s.

    python bench/report.py [--reuse] [--candidates N]

builds the store (drop and create; ``--candidates 200000`` for a smaller one) and times the report; ``--reuse``
times an existing bench database.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/mucode_bench_report"
GOAL_S = 2.0


def _dashboard_bench():
    """bench/dashboard.py as a module (its name would clash with the ``dashboard`` package)."""
    spec = importlib.util.spec_from_file_location("bench_dashboard", ROOT / "bench" / "dashboard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("MUCODE_BENCH_REPORT_PG_URL", DEFAULT_URL))
    ap.add_argument("--candidates", type=int, default=1_000_000)
    ap.add_argument("--reuse", action="store_true", help="time the existing database, do not rebuild it")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards (default: drop it)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    dash = _dashboard_bench()
    if not args.reuse:
        print(f"building {args.url} with ~{args.candidates:,} candidates (bench/dashboard.py's builder) ...",
              flush=True)
        t1 = time.perf_counter()
        counts = dash.build(args.url, args.candidates)
        print(f"built in {time.perf_counter() - t1:.0f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    os.environ["PGOPTIONS"] = "-c max_parallel_workers_per_gather=0"  # all of a query's CPU in its backend
    meter = dash.CpuMeter(args.url)

    from app import report as RP
    from app.cli.report import to_markdown
    from app.store import Store

    store = Store(args.url)
    name = store.list_experiments()[0]["name"]

    def run(per_turn: bool):
        rep = RP.build_report(store, RP.resolve_experiments(store, [name]), per_turn=per_turn)
        to_markdown(rep)
        return rep

    rep = run(False)
    cells = sum(len(r.cells) for r in rep.rows)
    print(f"\nreport of {name}: {len(rep.rows)} rows x {len(rep.columns)} columns = {cells} cells, "
          f"{len(rep.comparisons)} comparison(s); problems {rep.problems}")
    load = os.getloadavg()
    results = []
    for label, per_turn in (("report", False), ("report --per-turn", True)):
        walls, cpus = [], []
        for _ in range(args.repeat):
            c0 = meter.snapshot()
            t1 = time.perf_counter()
            run(per_turn)
            walls.append(time.perf_counter() - t1)
            cpus.append(meter.snapshot() - c0)
        results.append((label, min(walls), statistics.median(walls), min(cpus)))
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f}")
    print(f"{'what':<22} {'wall best':>9} {'wall median':>11} {'cpu':>7} {'cpu / 2 s goal':>15}")
    for label, best, med, cpu in results:
        print(f"{label:<22} {best:9.3f} {med:11.3f} {cpu:7.3f} {cpu / GOAL_S:15.2f}")
    store.dispose()
    if not args.keep and not args.reuse:
        from sqlalchemy import text

        from app.db.engine import make_engine

        admin = make_engine(args.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{args.url.rsplit("/", 1)[1]}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
