"""Benchmark: build the relabeled SFT set over ~1M synthetic candidates (~50k trajectories) on Postgres.

    python bench/relabel.py [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--keep]

Shape (the paper's protocol with Best-of-N-style collection, chosen to land at ~1M candidates):
- 3,334 train problems x M=15 rollouts = 50,010 train trajectories (+ 166 test-split problems x 15 rollouts in
  the same round, which the query must leave out);
- T=3 turns: a rollout is solved with a per-problem probability (difficulty spread from 0 to 0.9, so about a tenth
  of the problems has no correct rollout at all); a solved one stops at turn 1, 2 or 3, a failed one runs 3 turns;
- N=8 candidates per turn, one chosen (the one the trajectory continued from), every candidate scored by the
  round's verifier -> ~1.05M candidates, ~1.05M verifier scores, ~130k turns with realistic message lists.
The data goes in with COPY into a fresh database (schema from the migrations), then ANALYZE. Timed: the relabel
build (ranking query + INSERT ... SELECT of the examples + stats, one transaction), for µCode (both) and each
baseline, and the JSONL export. Goal: the µCode build in <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_S = 10.0
PROMPT = (
    "Write a Python function implementation for the following prompt:\n\nWrite a function to find the {i}-th "
    "number in a sequence defined by the rules of problem {i}.\n\nYour code should satisfy these tests:\n\n"
    "assert f({i}) == {j}\nassert f(1) == 1\nassert f(2) == 3\n\nReturn only the implementation code, no tests "
    "or explanations. Be sure to include the relevant import statements:\n```python\ncode\n```"
)


def response(p: int, r: int, t: int, n: int) -> str:
    return f"```python\ndef f(n):\n    # p{p} r{r} t{t} c{n}\n    return n * {n + 1} - {t}\n```"


def generate(conn, *, train_problems: int, test_problems: int, rollouts: int, turns: int, cands: int, seed: int):
    """COPY the synthetic world into an empty, migrated database. Returns (round_id, counts)."""
    rng = random.Random(seed)
    cur = conn.cursor()
    cur.execute("INSERT INTO datasets (name, source_path, source_sha256, num_problems) "
                "VALUES ('synth', 'bench', repeat('0', 64), %s) RETURNING id", (train_problems + test_problems,))
    ds = cur.fetchone()[0]
    cur.execute("INSERT INTO model_versions (name, kind, base_model, uri, config, metrics) VALUES "
                "('bench-gen', 'generator', 'base', 'base', '{}', '{}'), "
                "('bench-rm', 'verifier', 'base', 'base', '{}', '{}') RETURNING id")
    gen, rm = (row[0] for row in cur.fetchall())
    cur.execute("INSERT INTO experiments (name, method, base_model, config) VALUES "
                "('bench', 'mucode', 'base', '{}') RETURNING id")
    exp = cur.fetchone()[0]
    cur.execute("INSERT INTO rounds (experiment_id, index, status, generator_id, verifier_out_id, steps) "
                "VALUES (%s, 0, 'running', %s, %s, '{}') RETURNING id", (exp, gen, rm))
    rnd = cur.fetchone()[0]

    n_problems = train_problems + test_problems
    with cur.copy("COPY problems (id, dataset_id, split, external_id, prompt, entry_point, code_prefix, setup_code, "
                  "shown_tests, public_tests, private_tests, public_suite_hash, private_suite_hash, suite_hash, "
                  "meta) FROM STDIN") as cp:
        tests = json.dumps(["assert f(1) == 1", "assert f(2) == 3"])
        for p in range(1, n_problems + 1):
            split = "train" if p <= train_problems else "test"
            h = f"{p:064x}"
            cp.write_row((p, ds, split, f"synth/{p}", PROMPT.format(i=p, j=p * 7), "f", "", "", tests, tests,
                          tests, h, h, h, "{}"))

    counts = {"problems": n_problems, "rollouts": 0, "turns": 0, "candidates": 0, "scores": 0,
              "train_trajectories": 0}
    rollout_rows, turn_rows = [], []
    # Candidates and scores are streamed through temporary files (closed after their COPY), not held in memory.
    cand_file = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
    score_file = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
    rid = tid = cid = 0
    sampling = json.dumps({"temperature": 0.7, "top_p": 1.0, "max_tokens": 1000})
    for p in range(1, n_problems + 1):
        difficulty = (p % 10) / 10.0  # P(solve) in {0, .1, ..., .9}
        prompt = PROMPT.format(i=p, j=p * 7)
        for r in range(rollouts):
            rid += 1
            solved = rng.random() < difficulty
            k = rng.randint(1, turns) if solved else turns
            messages = [{"role": "user", "content": prompt}]
            for t in range(1, k + 1):
                tid += 1
                last = t == k
                ok = solved and last
                fb = "Code passed all tests" if ok else f"AssertionError: assert f({p}) == {p * 7} (got {t})"
                chosen = rng.randrange(cands)
                turn_rows.append((tid, rid, t, json.dumps(messages), fb))
                for n in range(cands):
                    cid += 1
                    text = response(p, r, t, n)
                    passed = ok if n == chosen else (rng.random() < difficulty * 0.5)
                    cand_file.write("\t".join((
                        str(cid), str(tid), str(n), text.replace("\n", "\\n"), text.replace("\n", "\\n"),
                        f"{cid:064x}", "80", "stop", sampling, "t" if n == chosen else "f",
                        "t" if passed else "f", "t" if passed else "f",
                    )) + "\n")
                    score = rng.gauss(1.0 if passed else -1.0, 1.0)
                    score_file.write(f"{cid}\t{rm}\t{score:.6f}\n")
                messages = messages + [{"role": "assistant", "content": response(p, r, t, chosen)},
                                       {"role": "user", "content": "Feedback: " + fb}]
            rollout_rows.append((rid, rnd, p, gen, r, 1000 * p + r, "done", k, solved, solved))
            if p <= train_problems:
                counts["train_trajectories"] += 1
    counts.update(rollouts=rid, turns=tid, candidates=cid, scores=cid)

    with cur.copy("COPY rollouts (id, round_id, problem_id, generator_id, sample_index, seed, status, num_turns, "
                  "final_label, public_passed) FROM STDIN") as cp:
        for row in rollout_rows:
            cp.write_row(row)
    with cur.copy("COPY turns (id, rollout_id, index, messages, feedback) FROM STDIN") as cp:
        for row in turn_rows:
            cp.write_row(row)
    for f, sql in (
        (cand_file, ("COPY candidates (id, turn_id, sample_index, response, code, code_hash, completion_tokens, "
                     "finish_reason, sampling, chosen, public_passed, private_passed) FROM STDIN")),
        (score_file, "COPY verifier_scores (candidate_id, verifier_id, score) FROM STDIN"),
    ):
        f.seek(0)
        with cur.copy(sql) as cp:
            while chunk := f.read(1 << 20):
                cp.write(chunk)
        f.close()
    for table in ("problems", "rollouts", "turns", "candidates"):
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    conn.commit()
    return rnd, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-url", default=os.environ.get(
        "MUCODE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        help="An admin connection; the bench creates (and drops) its own database.")
    ap.add_argument("--train-problems", type=int, default=3334)
    ap.add_argument("--test-problems", type=int, default=166)
    ap.add_argument("--rollouts", type=int, default=15)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=8, help="candidates per turn (one chosen)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed µCode builds (the median is the result)")
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    ap.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the ranking query")
    args = ap.parse_args()

    from sqlalchemy import text

    from app.db.engine import make_engine
    from app.store import Store
    from trainers.relabel import build_training_set, export_jsonl

    admin = make_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    name = f"mucode_bench_relabel_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.pg_url.rsplit("/", 1)[0] + f"/{name}"
    store = None
    try:
        store = Store(url)
        store.upgrade()
        t0 = time.perf_counter()
        raw = store.engine.raw_connection()
        try:
            rnd, counts = generate(
                raw.driver_connection, train_problems=args.train_problems, test_problems=args.test_problems,
                rollouts=args.rollouts, turns=args.turns, cands=args.candidates, seed=args.seed,
            )
        finally:
            raw.close()
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE"))
        load_s = time.perf_counter() - t0
        print(f"database {name}: loaded in {load_s:.1f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))

        if args.explain:
            from app.store.relabel import _ctes

            ctes = _ctes("mucode", "both", {rnd: 2})
            with store.engine.connect() as c:
                plan = c.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) WITH {ctes} SELECT count(*) FROM ranked"))
                print("\n".join(r[0] for r in plan))

        results = {}
        for method, expert in (("mucode", "both"), ("mucode", "oracle"), ("mucode", "learned"),
                               ("multi_rft", None), ("rft", None), ("rft_lv", None)):
            label = method + (f"/{expert}" if expert else "")
            t1 = time.perf_counter()
            ts = build_training_set(store, rnd, method=method, expert=expert)
            dt = time.perf_counter() - t1
            results[label] = (dt, ts)
            st = ts["stats"]
            print(f"  {label:16s} {dt:6.2f} s  examples {st['examples']:>7,}  by source {st['examples_by_source']}"
                  f"  problems without a correct response {st['problems_without_correct']}")
        # The goal's number: fresh µCode builds (new sets, same data), median of --repeat runs.
        times = [results["mucode/both"][0]]
        for i in range(max(0, args.repeat - 1)):
            t1 = time.perf_counter()
            ts = build_training_set(store, rnd, method="mucode", name=f"bench/mucode-both-{i}")
            times.append(time.perf_counter() - t1)
        times.sort()
        dt = times[len(times) // 2]
        st = ts["stats"]
        load = os.getloadavg()[0]
        print(f"µCode relabel build (ranking + INSERT ... SELECT + stats, one transaction), median of {len(times)}: "
              f"{dt:.2f} s (runs: {', '.join(f'{x:.2f}' for x in times)}; last run's phases "
              f"{st.get('phase_seconds')}; host load average {load:.1f} on {os.cpu_count()} CPUs)")
        print(f"  over {counts['candidates']:,} candidates / {counts['train_trajectories']:,} train trajectories -> "
              f"{st['examples']:,} examples; left out {st['excluded_non_train_rollouts']:,} test-split rollouts; "
              f"goal <= {GOAL_S:.0f} s: {'MET' if dt <= GOAL_S else 'MISSED'}")
        with tempfile.TemporaryDirectory() as tmp:
            t2 = time.perf_counter()
            n = export_jsonl(store, ts["id"], Path(tmp) / "sft.jsonl")
            size = (Path(tmp) / "sft.jsonl").stat().st_size
            print(f"JSONL export: {n:,} examples, {size / 1e6:.0f} MB in {time.perf_counter() - t2:.2f} s")
        return 0 if dt <= GOAL_S else 1
    finally:
        if store is not None:
            store.dispose()
        if args.keep:
            print(f"kept database {name}: {url}")
        else:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
