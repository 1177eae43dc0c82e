"""Benchmark: bulk ingest of candidates and their executions through the store vs raw COPY, on Postgres.

    python bench/store_ingest.py [--candidates 200000] [--batch 10000] [--pg-url URL] [--keep]

Shape: the MBPP train split (374 problems, loaded through the store), M rollouts per problem, T=3 turns, N=5
candidates per turn (Best-of-N) -> 200k candidates. About 20% of the candidates repeat an earlier program of
the same problem (the execution cache's hits), so each distinct program has one public and one private
execution (~320k executions). Rollouts and turns are created through the store too (not timed).

Two fresh databases get the same rows, in the same batches (a worker's write size), one transaction per batch,
the two paths alternating batch by batch (so load from other processes slows both alike):
- store: ``store.add_candidates(batch)`` + ``store.add_executions(batch)`` - COPY into a temp table, then
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` and the ids of every row by natural key;
- raw COPY: ``COPY candidates`` + ``COPY executions`` straight into the tables (no conflict handling, no ids).
Both start from the same list of dicts. Goal: the store reaches at least half the rows/s of raw COPY.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from tqdm import tqdm

GOAL = 0.5
TURNS, PER_TURN = 3, 5
console = Console()


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def prepare(store, rollouts_per_problem: int) -> tuple[list, dict]:
    """Problems, a round, rollouts and turns, through the store: (problems, {(problem, m, t): turn id})."""
    from app.datasets import load_dataset
    from app.db import models as m

    load_dataset(store, "mbpp")
    problems = store.list_problems("mbpp", "train")
    with store.session() as s:
        exp = m.Experiment(name="bench", method="mucode", base_model="base", config={})
        s.add(exp)
        s.flush()
        rnd = m.Round(experiment_id=exp.id, index=0, status="running")
        s.add(rnd)
        s.flush()
        round_id = rnd.id
    rollouts = store.add_rollouts(
        [
            {"round_id": round_id, "problem_id": p.id, "sample_index": i, "seed": i, "num_turns": TURNS}
            for p in problems
            for i in range(rollouts_per_problem)
        ]
    )
    turns: dict = {}
    keys = list(rollouts.items())
    for i in range(0, len(keys), 5000):
        chunk = keys[i : i + 5000]
        ids = store.add_turns(
            [
                {
                    "rollout_id": rid,
                    "index": t,
                    "messages": [{"role": "user", "content": f"problem {key[2]}"}],
                }
                for key, rid in chunk
                for t in range(1, TURNS + 1)
            ]
        )
        by_rollout = {rid: key for key, rid in chunk}  # key: (round_id, None, problem_id, sample_index)
        turns.update({(*by_rollout[rid][2:], t): tid for (rid, t), tid in ids.items()})
    return problems, turns


def generate(problems, rollouts_per_problem: int, n: int, seed: int) -> tuple[list[dict], list[dict], list]:
    """Candidate rows, their (problem, rollout, turn) (turn ids differ per database) and execution rows."""
    rng = random.Random(seed)
    cands, execs, owners, seen = [], [], [], set()
    programs: dict[int, list[str]] = {}
    for p in problems:
        for r in range(rollouts_per_problem):
            for t in range(1, TURNS + 1):
                for j in range(PER_TURN):
                    if len(cands) == n:
                        return cands, execs, owners
                    pool = programs.setdefault(p.id, [])
                    if pool and rng.random() < 0.2:
                        code = rng.choice(pool)
                    else:
                        code = f"{p.reference_solution}\n# variant {r}.{t}.{j} {rng.random():.6f}\n"
                        pool.append(code)
                    ch = sha(code)
                    response = f"Here is my solution.\n```python\n{code}```\nIt handles the edge cases.\n"
                    owners.append((p.id, r, t))
                    cands.append(
                        {
                            "sample_index": j,
                            "response": response,
                            "code": code,
                            "code_hash": ch,
                            "prompt_tokens": 180 + 40 * t,
                            "completion_tokens": len(response) // 4,
                            "finish_reason": "stop",
                            "chosen": j == 0,
                            "public_passed": rng.random() < 0.4,
                            "private_passed": rng.random() < 0.3,
                            "sampling": {
                                "temperature": 0.7,
                                "top_p": 1.0,
                                "max_new_tokens": 1000,
                                "seed": r * 31 + j,
                            },
                        }
                    )
                    for kind, suite, tests in (
                        ("public", p.public_suite_hash, p.public_tests),
                        ("private", p.private_suite_hash, p.private_tests),
                    ):
                        if (ch, suite, kind) in seen:
                            continue
                        seen.add((ch, suite, kind))
                        ok = rng.random() < 0.35
                        execs.append(
                            {
                                "code_hash": ch,
                                "suite_hash": suite,
                                "suite_kind": kind,
                                "sandbox_version": "bench-1",
                                "status": "passed" if ok else "failed",
                                "passed": ok,
                                "tests": [
                                    {"test": x[:200], "outcome": "passed" if ok else "failed", "message": ""}
                                    for x in tests
                                ],
                                "feedback": "Code passed all tests"
                                if ok
                                else "AssertionError: assert f(3) == 4",
                                "stdout": "",
                                "stderr": "",
                                "duration_ms": round(rng.uniform(20, 400), 2),
                            }
                        )
    return cands, execs, owners


def with_turn_ids(cands, owners, turns) -> list[dict]:
    return [{**c, "turn_id": turns[owner]} for c, owner in zip(cands, owners)]


def batches(cands: list[dict], execs: list[dict], size: int) -> list[tuple[slice, list[dict]]]:
    """Candidate slices with the executions of the programs that first appear in them (a worker's unit)."""
    by_code: dict[str, list[dict]] = {}
    for e in execs:
        by_code.setdefault(e["code_hash"], []).append(e)
    return [
        (slice(i, i + size), [e for c in cands[i : i + size] for e in by_code.pop(c["code_hash"], [])])
        for i in range(0, len(cands), size)
    ]


def store_batch(store, cands: list[dict], execs: list[dict]) -> None:
    with store.session() as s:
        ids = store.add_candidates(cands, s=s)
        eids = store.add_executions(execs, s=s)
    assert len(ids) == len(cands) and len(eids) == len(execs)


def copy_batch(raw, cands: list[dict], execs: list[dict]) -> None:
    """Plain COPY into the tables, one transaction (what the store is measured against)."""
    with raw.driver_connection.cursor() as cur:
        for table, rows in (("candidates", cands), ("executions", execs)):
            if not rows:
                continue
            cols = list(rows[0])
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row([json.dumps(r[c]) if c in ("sampling", "tests") else r[c] for c in cols])
    raw.commit()


def run(stores, rows, execs, size) -> dict[str, float]:
    """Both paths batch by batch, alternating which goes first, so a busy machine slows both alike."""
    spent = {"store": 0.0, "copy": 0.0}
    raw = stores["copy"].engine.raw_connection()
    steps = {
        "store": lambda sl, ex: store_batch(stores["store"], rows["store"][sl], ex),
        "copy": lambda sl, ex: copy_batch(raw, rows["copy"][sl], ex),
    }
    try:
        parts = batches(rows["store"], execs, size)
        for i, (sl, ex) in enumerate(tqdm(parts, desc="ingest", unit="batch", leave=False)):
            for path in ("store", "copy") if i % 2 == 0 else ("copy", "store"):
                t0 = time.perf_counter()
                steps[path](sl, ex)
                spent[path] += time.perf_counter() - t0
    finally:
        raw.close()
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--candidates", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000, help="rows per store call / COPY transaction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the two databases")
    args = ap.parse_args()

    from app.db.engine import make_engine
    from app.store import Store

    admin = make_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    names = {k: f"mucode_bench_ingest_{k}_{uuid.uuid4().hex[:6]}" for k in ("store", "copy")}
    stores = {}
    try:
        for kind, name in names.items():
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
            stores[kind] = Store(args.pg_url.rsplit("/", 1)[0] + f"/{name}")
            stores[kind].upgrade()
        rollouts_per_problem = -(-args.candidates // (374 * TURNS * PER_TURN))
        with console.status("creating problems, rollouts and turns through the store"):
            prepared = {k: prepare(s, rollouts_per_problem) for k, s in stores.items()}
            problems = prepared["store"][0]
            cands, execs, owners = generate(problems, rollouts_per_problem, args.candidates, args.seed)
            rows = {k: with_turn_ids(cands, owners, turns) for k, (_, turns) in prepared.items()}
        console.print(
            f"{len(cands):,} candidates, {len(execs):,} executions, {len(problems)} problems, "
            f"{rollouts_per_problem * len(problems):,} rollouts x {TURNS} turns x {PER_TURN}; "
            f"batches of {args.batch:,} candidates"
        )
        spent = run(stores, rows, execs, args.batch)
        t_store, t_copy = spent["store"], spent["copy"]
        for k, s in stores.items():
            with s.session() as sess:
                got = [
                    sess.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                    for t in ("candidates", "executions")
                ]
            assert got == [len(cands), len(execs)], (k, got)
        total = len(cands) + len(execs)
        table = Table(
            title=f"store ingest on Postgres ({len(cands):,} candidates + {len(execs):,} executions)"
        )
        for col in ("path", "seconds", "rows/s", "candidates/s"):
            table.add_column(col, justify="left" if col == "path" else "right")
        for label, t in (("store (COPY → temp, INSERT … ON CONFLICT, ids)", t_store), ("raw COPY", t_copy)):
            table.add_row(label, f"{t:.2f}", f"{total / t:,.0f}", f"{len(cands) / t:,.0f}")
        console.print(table)
        ratio = t_copy / t_store
        verdict = "[green]meets[/]" if ratio >= GOAL else "[red]misses[/]"
        console.print(f"ratio store / raw COPY = [bold]{ratio:.2f}[/] ({verdict} the goal of >= {GOAL})")
    finally:
        for s in stores.values():
            s.dispose()
        if not args.keep:
            with admin.connect() as c:
                for name in names.values():
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
