"""Benchmark: the dashboard on a Postgres store with ~1M candidates.

Builds (with COPY) a store shaped like a long µCode run: one experiment, R rounds; each round has 15 training
trajectories of up to 3 turns for each of the 374 MBPP train problems, and evaluations on MBPP test (500) and
HumanEval (164) - greedy (1 chain) and Best-of-N (N=5, 10 chains, PT+LV) - with their rollouts, candidates,
shared executions, verifier scores, per-chain results, relabeled SFT examples and jobs. Rounds are added until
the candidate count reaches ``--candidates``. Then it times every ``dash_*`` store query the dashboard runs
(with the Compare page's interval and scaling-curve computations) and every page through ``streamlit.testing``
(cold cache), and prints a table. Target: every page < 2 s.

    python bench/dashboard.py                        # build (drop + create) and time
    python bench/dashboard.py --reuse                # time an existing bench database
    python bench/dashboard.py --candidates 200000    # smaller
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/mucode_bench_dashboard"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ERRORS = [("error", "NameError: name 'helper' is not defined (line 3)"),
          ("error", "TypeError: unsupported operand type(s) for +: 'int' and 'str' (line 2)"),
          ("error", "IndexError: list index out of range (line 4)"),
          ("error", "SyntaxError: invalid syntax (line 1)"),
          ("error", "RecursionError: maximum recursion depth exceeded (line 5)"),
          ("error", "ZeroDivisionError: division by zero (line 2)"),
          ("timeout", "Timeout: the code ran longer than 10 seconds"),
          ("memory", "MemoryError: the program exceeded the memory limit")]


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


class Ids:
    def __init__(self) -> None:
        self.n: dict[str, int] = {}

    def next(self, table: str) -> int:
        self.n[table] = self.n.get(table, 0) + 1
        return self.n[table]


# -- building the store ----------------------------------------------------------------------------------
class Synthetic:
    """The rows of a store with ``target`` candidates (rounds of training rollouts, relabels, evaluations,
    jobs), generated in memory and copied in with COPY."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids = Ids()
        self.rows: dict[str, list[tuple]] = {}
        self.candidates = 0

    def add(self, table: str, row: tuple) -> None:
        self.rows.setdefault(table, []).append(row)

    def problems(self) -> list[dict]:
        """Datasets and problems, each with a pool of program variants (the execution cache is shared by code)."""
        rng, ids, add, rows = self.rng, self.ids, self.add, self.rows
        problems: list[dict] = []
        for ds, split, ext_ids in (("mbpp", "train", range(601, 975)), ("mbpp", "test", range(11, 511)),
                                   ("humaneval", "test", range(164))):
            if not any(r[1] == ds for r in rows.get("datasets", [])):
                add("datasets", (ids.next("datasets"), ds, "bench", sha(ds), 0))
            ds_id = next(r[0] for r in rows["datasets"] if r[1] == ds)
            for e in ext_ids:
                pid = ids.next("problems")
                ext = f"mbpp/{e}" if ds == "mbpp" else f"HumanEval/{e}"
                prompt = f"Write a function that solves task {ext}: transform the input list as described " \
                         f"(bench problem {pid}, keyword {rng.choice(['prime', 'string', 'matrix', 'sum', 'chain'])})."
                pub = ["assert f(1) == 2"]
                priv = pub + ["assert f(2) == 3", "assert f(5) == 6"]
                p = {"id": pid, "ext": ext, "ds": ds, "split": split, "prompt": prompt,
                     "pub_hash": sha(ext + "/public"), "priv_hash": sha(ext + "/private"),
                     "difficulty": rng.random()}
                add("problems", (pid, ds_id, split, ext, prompt, "f", None, "", "", json.dumps(pub), json.dumps(pub),
                                 json.dumps(priv), p["pub_hash"], p["priv_hash"], sha(ext), "{}"))
                # variants: (code, code_hash, public, private, status, feedback)
                correct, wrong = [], []
                n_correct = 0 if p["difficulty"] > 0.93 else max(1, int(12 * (1 - p["difficulty"])))
                for v in range(40):
                    code = f"def f(x):\n    # variant {v} of {ext}\n    return x + {1 if v < n_correct else v + 2}"
                    if v < n_correct:
                        correct.append((code, sha(code), True, True, "passed", "Code passed all tests"))
                        continue
                    r = rng.random()
                    if r < 0.1:
                        var = (code, sha(code), True, False, "failed", "AssertionError: assert f(2) == 3")
                    elif r < 0.55:
                        var = (code, sha(code), False, False, "failed", "AssertionError: assert f(1) == 2")
                    else:
                        st_, fb = rng.choice(ERRORS)
                        var = (code, sha(code), False, False, st_, fb)
                    wrong.append(var)
                p["correct"], p["wrong"] = correct, wrong
                for _code, h, pub_ok, priv_ok, status, fb in correct + wrong:
                    for kind, ok in (("public", pub_ok), ("private", priv_ok)):
                        st_ = "passed" if ok else status
                        fbk = "Code passed all tests" if ok else fb
                        outcome = "passed" if ok or (kind == "private" and pub_ok) else (
                            "failed" if st_ == "failed" else "error")
                        tests = [{"test": "assert f(1) == 2", "outcome": outcome, "message": "" if ok else fbk}]
                        suite = p["pub_hash"] if kind == "public" else p["priv_hash"]
                        add("executions", (ids.next("executions"), h, suite,
                                           kind, "bench-1", st_, ok, json.dumps(tests), fbk, "", "",
                                           10000.0 if st_ == "timeout" else rng.uniform(20, 400)))
                problems.append(p)
        return problems

    def sample(self, p: dict, rnd: int) -> tuple:
        """A candidate's variant and its verifier score."""
        p_ok = max(0.02, min(0.95, 0.75 * (1 - p["difficulty"]) + 0.03 * rnd))
        if p["correct"] and self.rng.random() < p_ok:
            var = self.rng.choice(p["correct"])
            score = self.rng.gauss(1.0 + 0.05 * rnd, 1.0)
        else:
            var = self.rng.choice(p["wrong"])
            score = self.rng.gauss(0.4 if var[2] else -0.6, 1.0)
        return var, score

    def new_candidate(self, turn_id: int, n: int, var: tuple, chosen: bool, vid: int, score: float, seed_: int) -> int:
        cid = self.ids.next("candidates")
        self.add("candidates", (cid, turn_id, n, f"```python\n{var[0]}\n```", var[0], var[1], 120,
                           len(var[0]) // 4, "stop", json.dumps({"temperature": 0.7, "seed": seed_}), chosen,
                           var[2], var[3]))
        self.add("verifier_scores", (cid, vid, round(score, 4)))
        self.candidates += 1
        return cid

    def one_round(self, rnd: int, prev_gen: int | None, exp_id: int, problems: list[dict]) -> int:
        """Round ``rnd``: its models, training trajectories, relabel, evaluations and jobs; returns G_k."""
        ids, add = self.ids, self.add
        gen = ids.next("model_versions")
        add("model_versions", (gen, f"bench/r{rnd}/generator-in", "generator", "llama", "hub:llama", prev_gen,
                               "{}", "{}"))
        ver = ids.next("model_versions")
        add("model_versions", (ver, f"bench/r{rnd}/verifier", "verifier", "llama", f"/ckpt/r{rnd}/verifier", None,
                               "{}", json.dumps({"eval": {"holdout": {
                                   "roc_auc": round(0.7 + 0.01 * rnd, 3), "pair_accuracy": round(0.68 + 0.01 * rnd, 3),
                                   "bon_accuracy": 0.55, "bon_random_baseline": 0.4, "bon_oracle_rate": 0.8,
                                   "calibration": [{"lo": b / 10, "hi": (b + 1) / 10, "count": 100,
                                                    "mean_predicted": (b + 0.5) / 10,
                                                    "observed": min(1, (b + 0.5) / 10 + 0.05)}
                                                   for b in range(10)]}}})))
        rid = ids.next("rounds")
        start = T0 + timedelta(hours=8 * rnd)
        steps = {}
        t = start
        for step, mins in (("collect", 120), ("score", 10), ("train_verifier", 45), ("relabel", 2),
                           ("train_generator", 90), ("evaluate", 95)):
            steps[step] = {"state": "done", "started_at": t.isoformat(),
                           "finished_at": (t + timedelta(minutes=mins)).isoformat(), "seconds": mins * 60}
            t += timedelta(minutes=mins)
        add("rounds", (rid, exp_id, rnd, "done", gen, None, ver, None, json.dumps(steps), None, start, t))
        self.rows.setdefault("_mv_round", []).append((rid, gen, ver))

        train = [p for p in problems if p["split"] == "train"]
        self.training(rnd, rid, gen, ver, train)
        self.evaluations(rnd, rid, gen, ver, exp_id, problems, t)
        self.jobs(rnd, rid, start)
        return gen

    def training(self, rnd: int, rid: int, gen: int, ver: int, train: list[dict]) -> None:
        """The training trajectories (15 per problem, up to 3 turns) and their relabeled SFT examples."""
        ids, add = self.ids, self.add
        round_rollouts: dict[int, list[tuple]] = {}
        for p in train:
            for m_ in range(15):
                ro = ids.next("rollouts")
                messages = [{"role": "user", "content": p["prompt"]}]
                final = None
                for t_ix in range(1, 4):
                    var, score = self.sample(p, rnd)
                    tid = ids.next("turns")
                    add("turns", (tid, ro, t_ix, json.dumps(messages), var[5]))
                    cid = self.new_candidate(tid, 0, var, True, ver, score, m_)
                    final = (t_ix, var, cid, score)
                    if var[2]:
                        break
                    messages = messages + [{"role": "assistant", "content": f"```python\n{var[0]}\n```"},
                                           {"role": "user", "content": "Feedback: " + var[5]}]
                add("rollouts", (ro, rid, None, p["id"], gen, m_, rnd * 1000 + m_, "done", final[0], final[1][3],
                                 final[1][2]))
                round_rollouts.setdefault(p["id"], []).append((ro, final[0], final[1][3], final[2], final[3]))
        ts = ids.next("training_sets")
        add("training_sets", (ts, f"bench/r{rnd}/sft", "sft", self.exp_id, rid, "{}", "{}"))
        for pid, ros in round_rollouts.items():
            good = [r for r in ros if r[2]]
            if not good:
                continue
            best = max(good, key=lambda r: r[4])
            for ro, nt, _label, _cid, _ in [r for r in ros if not r[2]][:3]:
                for t_ix in range(1, nt + 1):
                    add("sft_examples", (ids.next("sft_examples"), ts, pid, ro, t_ix, best[3], "relabeled", ver))
            for ro, nt, _label, cid, _ in good:
                for t_ix in range(1, nt + 1):
                    add("sft_examples", (ids.next("sft_examples"), ts, pid, ro, t_ix, cid, "positive", ver))

    def evaluations(self, rnd: int, rid: int, gen: int, ver: int, exp_id: int, problems: list[dict],
                    t: datetime) -> None:
        """Greedy and BoN (N=5, 10 chains, PT+LV) on MBPP test and HumanEval."""
        ids, add = self.ids, self.add
        mbpp_test = [p for p in problems if p["ds"] == "mbpp" and p["split"] == "test"]
        humaneval = [p for p in problems if p["ds"] == "humaneval"]
        for ds, probs in (("mbpp", mbpp_test), ("humaneval", humaneval)):
            for mode, n_cand, chains in (("greedy", 1, 1), ("bon", 5, 10)):
                ev = ids.next("evaluations")
                add("evaluations", (ev, f"bench/r{rnd}/{ds}/{mode}", exp_id, rid, gen, ver, ds, "test", mode,
                                    "pt+lv" if mode == "bon" else None, n_cand, chains, 3, "{}", "done", "{}",
                                    t))
                for p in probs:
                    for ch in range(chains):
                        ro = ids.next("rollouts")
                        messages = [{"role": "user", "content": p["prompt"]}]
                        solved = False
                        for t_ix in range(1, 4):
                            tid = ids.next("turns")
                            cands = [self.sample(p, rnd) for _ in range(n_cand)]
                            pick = max(range(n_cand), key=lambda i: (cands[i][0][2], cands[i][1]))
                            add("turns", (tid, ro, t_ix, json.dumps(messages), cands[pick][0][5]))
                            pick_id = None
                            for n, (var, score) in enumerate(cands):
                                cid = self.new_candidate(tid, n, var, n == pick, ver, score, ch)
                                if n == pick:
                                    pick_id = cid
                            var = cands[pick][0]
                            solved = solved or (var[2] and var[3])
                            add("evaluation_results", (ids.next("evaluation_results"), ev, p["id"], ch, t_ix, pick_id,
                                                       var[2], var[3], solved))
                            if var[2]:
                                break
                            messages = messages + [{"role": "assistant", "content": f"```python\n{var[0]}\n```"},
                                                   {"role": "user", "content": "Feedback: " + var[5]}]
                        add("rollouts", (ro, None, ev, p["id"], gen, ch, ch, "done", t_ix, var[3], var[2]))

    def jobs(self, rnd: int, rid: int, start: datetime) -> None:
        """180 finished jobs of the round (2% failed)."""
        for j in range(180):
            kind = ("sample", "execute", "score")[j % 3]
            state_ = "failed" if self.rng.random() < 0.02 else "done"
            s0 = start + timedelta(seconds=40 * j)
            end = s0 + timedelta(seconds=self.rng.uniform(5, 90))
            self.add("jobs", (self.ids.next("jobs"), f"r{rnd}/{kind}/{j}", kind, kind, state_, rid, None, "{}", "{}",
                              1 if state_ == "done" else 3,
                              "RuntimeError: worker lost" if state_ == "failed" else None,
                              f"worker-{j % 4}", s0 - timedelta(seconds=5), s0, end))


def build(url: str, target: int, seed: int = 0) -> dict[str, int]:
    from sqlalchemy import text

    from app.db.engine import make_engine
    from app.store import Store

    admin = make_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    name = url.rsplit("/", 1)[1]
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    store = Store(url)
    store.upgrade()
    store.dispose()

    synth = Synthetic(seed)
    problems = synth.problems()
    exp_id = synth.exp_id = synth.ids.next("experiments")
    synth.add("experiments", (exp_id, "bench-exp", "mucode", "llama-3.2-1b-instruct",
                              json.dumps({"turns": 3, "M": 15})))
    rnd, gen = 0, None
    while synth.candidates < target:
        gen = synth.one_round(rnd, gen, exp_id, problems)
        rnd += 1
        print(f"  round {rnd - 1}: {synth.candidates:,} candidates so far", flush=True)
    # one queued round at the end, so the queue is not empty
    for j in range(20):
        synth.add("jobs", (synth.ids.next("jobs"), f"next/sample/{j}", "sample", "sample", "queued", None, None,
                           "{}", "{}", 0, None, None, T0 + timedelta(days=30), None, None))
    return copy_rows(url, synth.rows)


def copy_rows(url: str, rows: dict[str, list[tuple]]) -> dict[str, int]:
    """COPY every table's rows in dependency order, then point the id sequences past them."""
    import psycopg

    columns = {
        "datasets": "id, name, source_path, source_sha256, num_problems",
        "problems": "id, dataset_id, split, external_id, prompt, entry_point, reference_solution, code_prefix, "
                    "setup_code, shown_tests, public_tests, private_tests, public_suite_hash, private_suite_hash, "
                    "suite_hash, meta",
        "executions": "id, code_hash, suite_hash, suite_kind, sandbox_version, status, passed, tests, feedback, "
                      "stdout, stderr, duration_ms",
        "experiments": "id, name, method, base_model, config",
        "model_versions": "id, name, kind, base_model, uri, parent_id, config, metrics",
        "rounds": "id, experiment_id, index, status, generator_id, verifier_in_id, verifier_out_id, "
                  "generator_out_id, steps, error, started_at, finished_at",
        "evaluations": "id, name, experiment_id, round_id, generator_id, verifier_id, dataset, split, mode, "
                       "selector, num_candidates, num_chains, max_turns, config, status, metrics, finished_at",
        "rollouts": "id, round_id, evaluation_id, problem_id, generator_id, sample_index, seed, status, num_turns, "
                    "final_label, public_passed",
        "turns": "id, rollout_id, index, messages, feedback",
        "candidates": "id, turn_id, sample_index, response, code, code_hash, prompt_tokens, completion_tokens, "
                      "finish_reason, sampling, chosen, public_passed, private_passed",
        "verifier_scores": "candidate_id, verifier_id, score",
        "training_sets": "id, name, kind, experiment_id, round_id, config, stats",
        "sft_examples": "id, training_set_id, problem_id, rollout_id, turn_index, target_candidate_id, source, "
                        "verifier_id",
        "evaluation_results": "id, evaluation_id, problem_id, chain_index, turn_index, candidate_id, public_passed, "
                              "private_passed, solved",
        "jobs": "id, key, kind, queue, state, round_id, evaluation_id, payload, result, attempts, error, worker, "
                "queued_at, started_at, finished_at",
    }
    order = ["datasets", "problems", "executions", "experiments", "model_versions", "rounds", "evaluations",
             "rollouts", "turns", "candidates", "verifier_scores", "training_sets", "sft_examples",
             "evaluation_results", "jobs"]
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    counts = {}
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            for table in order:
                t1 = time.perf_counter()
                cols = re.sub(r"\bindex\b", '"index"', columns[table])
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as cp:
                    for row in rows.get(table, []):
                        cp.write_row(row)
                counts[table] = len(rows.get(table, []))
                print(f"  COPY {table:<20} {counts[table]:>10,} rows  {time.perf_counter() - t1:6.1f} s", flush=True)
            for rid, gen, ver in rows["_mv_round"]:
                cur.execute("UPDATE model_versions SET round_id = %s WHERE id IN (%s, %s)", (rid, gen, ver))
            for table in order:
                if table != "verifier_scores":
                    cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                f"(SELECT COALESCE(MAX(id), 1) FROM {table}))")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return counts

# -- timing ------------------------------------------------------------------------------------------------
class CpuMeter:
    """CPU seconds spent by this process (all threads, so AppTest's script thread too) plus every Postgres
    backend connected to the bench database. On a busy machine wall-clock times mostly measure the wait for
    a core; the CPU total is what the work costs, i.e. about the wall time on an idle core. The bench runs
    Postgres without parallel workers (PGOPTIONS) so that all of a query's CPU is in its backend."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        self.own = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.tick = os.sysconf("SC_CLK_TCK")

    def _backends(self) -> float:
        pids = [r[0] for r in self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s", (self.own,))]
        total = 0.0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / self.tick
            except (OSError, IndexError, ValueError):
                pass
        return total

    def snapshot(self) -> float:
        return time.process_time() + self._backends()


def _time(fn, meter: CpuMeter, repeat: int = 3) -> tuple[float, float, float]:
    """(first wall s, median wall s, least CPU s) over ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        c0 = meter.snapshot()
        t1 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t1)
        cpus.append(meter.snapshot() - c0)
    return walls[0], statistics.median(walls), min(cpus)


def time_queries(url: str, meter: CpuMeter) -> list[tuple[str, float, float, float, str]]:
    from app.store import Store

    s = Store(url)
    exp = s.dash_experiments()[0]["id"]
    rounds = s.dash_rounds(exp)
    last_round = rounds[-1]["id"]
    hard = s.dash_unsolved_problems(exp, limit=1)
    prob = s.dash_problem("mbpp/700")
    ro = s.dash_problem_rollouts(prob["id"], limit=1)[0]["id"]
    verifiers = s.dash_verifiers()
    vid = verifiers[-1]["id"]
    etype = "NameError"
    sft = s.dash_relabel_targets(prob["id"], limit=1)
    window = [r["id"] for r in rounds[-5:]]  # the dashboard's default window: the last 5 rounds, one query each

    def per_round(fn):
        return lambda: [fn(rid) for rid in window]

    evals = s.dash_evaluations(exp)
    all_evals = [e["id"] for e in evals]
    bon_mbpp = [e["id"] for e in evals if e["mode"] == "bon" and e["dataset"] == "mbpp"]
    window_verifiers = [v["id"] for v in verifiers if v["round"] is not None][-5:]

    cases = [
        ("dash_summary", lambda: s.dash_summary()),
        ("dash_summary (exact counts)", lambda: s.dash_summary(exact_below=10**12)),
        ("dash_experiments", lambda: s.dash_experiments()),
        ("dash_rounds", lambda: s.dash_rounds(exp)),
        ("dash_train_turn_success", lambda: s.dash_train_turn_success(exp)),
        ("dash_evaluations", lambda: s.dash_evaluations(exp)),
        ("dash_eval_turn_success", lambda: s.dash_eval_turn_success(exp)),
        ("dash_round_candidates x5 rounds", per_round(lambda r: s.dash_round_candidates(round_ids=[r]))),
        ("dash_round_candidates, all rounds", lambda: s.dash_round_candidates(exp)),
        ("dash_verifier_agreement train x5", per_round(lambda r: s.dash_verifier_agreement(source="train",
                                                                                          round_ids=[r]))),
        ("dash_verifier_agreement eval x5", per_round(lambda r: s.dash_verifier_agreement(source="eval",
                                                                                         round_ids=[r]))),
        ("dash_verifier_agreement train, all", lambda: s.dash_verifier_agreement(exp, source="train")),
        ("dash_verifier_agreement 1 verifier", lambda: s.dash_verifier_agreement(None, vid)),
        ("dash_verifier_calibration (+AUC)", lambda: s.dash_verifier_calibration(vid)),
        ("dash_jobs_summary", lambda: s.dash_jobs_summary()),
        ("dash_jobs failed page", lambda: s.dash_jobs("failed", limit=10)),
        ("dash_job_step_times", lambda: s.dash_job_step_times(exp)),
        ("dash_count_problems", lambda: s.dash_count_problems("", with_rollouts=True)),
        ("dash_search_problems (page)", lambda: s.dash_search_problems("", with_rollouts=True, limit=25)),
        ("dash_search_problems 'prime'", lambda: s.dash_search_problems("prime", with_rollouts=True, limit=25)),
        ("dash_problem", lambda: s.dash_problem("mbpp/700")),
        ("dash_problem_rollouts (page)", lambda: s.dash_problem_rollouts(prob["id"], limit=25)),
        ("dash_rollout (detail)", lambda: s.dash_rollout(ro)),
        ("dash_error_types train x5", per_round(lambda r: s.dash_error_types(round_ids=[r]))),
        ("dash_error_types eval x5", per_round(lambda r: s.dash_error_types(source="eval", round_ids=[r]))),
        ("dash_error_types train, all rounds", lambda: s.dash_error_types(exp)),
        ("dash_failure_examples", lambda: s.dash_failure_examples(last_round, etype, limit=20)),
        ("dash_unsolved_problems (train)", lambda: s.dash_unsolved_problems(exp, limit=26)),
        ("dash_unsolved_problems (eval)", lambda: s.dash_unsolved_problems(exp, source="eval", limit=26)),
        ("dash_verifiers", lambda: s.dash_verifiers()),
        ("dash_problem_verifiers", lambda: s.dash_problem_verifiers(prob["id"])),
        ("dash_problem_ranking (page)", lambda: s.dash_problem_ranking(prob["id"], vid, limit=50)),
        ("dash_relabel_targets", lambda: s.dash_relabel_targets(prob["id"], limit=100)),
        ("dash_sft_state", lambda: s.dash_sft_state(sft[0]["id"]) if sft else None),
        # the Compare page: per-problem outcomes of one setting's evaluations (one query each, as the page
        # caches them), the first-turn candidates of the last round's MBPP Best-of-N, and the curve itself
        ("dash_eval_problem_outcomes x rounds", lambda: [s.dash_eval_problem_outcomes([e]) for e in bon_mbpp]),
        ("dash_eval_problem_outcomes, all evals", lambda: s.dash_eval_problem_outcomes(all_evals)),
        ("dash_bon_first_turn (MBPP BoN)", lambda: s.dash_bon_first_turn(bon_mbpp[-1])),
        ("scaling curve + intervals (pt+lv, random)", lambda: _scaling(s.dash_bon_first_turn(bon_mbpp[-1]))),
        ("accuracy intervals x rounds x turns", lambda: _intervals(s, bon_mbpp)),
        # the Rankings page's calibration and ROC: the verifiers of the last 5 rounds, one query each
        ("dash_verifier_curves x5 verifiers", lambda: [s.dash_verifier_curves([v]) for v in window_verifiers]),
    ]
    out = []
    for name, fn in cases:
        first, med, cpu = _time(fn, meter)
        out.append((name, first, med, cpu, ""))
    _ = hard
    s.dispose()
    return out


def _scaling(rows: list[dict]) -> None:
    """What the Compare page computes from the first-turn candidates: two selectors' curves and intervals."""
    from app.scaling import scaling_curve
    from app.stats import bootstrap_ci

    for selector in ("pt+lv", "random"):
        curve = scaling_curve(rows, selector, 5)
        for n in range(1, 6):
            bootstrap_ci(curve.at(n), resamples=2000)


def _intervals(s, evaluation_ids: list[int]) -> None:
    """The Compare page's accuracy intervals: every round's evaluation at every turn (2,000 resamples)."""
    from app.stats import bootstrap_ci

    for ev in evaluation_ids:
        per: dict[int, list] = {}
        for r in s.dash_eval_problem_outcomes([ev]):
            per.setdefault(r["problem_id"], []).append((r["first_solved"], r["chains"]))
        for t in (1, 2, 3):
            bootstrap_ci([sum(n for f, n in h if f is not None and f <= t) / sum(n for _, n in h)
                          for h in per.values()], resamples=2000)


def time_pages(url: str, meter: CpuMeter, repeat: int = 3) -> list[tuple[str, float, float, float, str]]:
    """Each page through streamlit.testing: cold (query cache cleared; best and median of ``repeat``) and warm
    (the same session rerun with the cache filled, as when a researcher refreshes)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["MUCODE_DATABASE_URL"] = url
    app = str(ROOT / "dashboard" / "home.py")
    AppTest.from_file(app, default_timeout=120).run()  # warm up imports (streamlit, altair, pandas)
    out = []
    for page, query in (("views/overview.py", {}), ("views/trajectories.py", {"problem": "mbpp/700"}),
                        ("views/failures.py", {}), ("views/rankings.py", {"problem": "mbpp/700"}),
                        ("views/compare.py", {"dataset": "mbpp"})):
        colds, cold_cpu, warm, warm_cpu, note = [], [], 0.0, 0.0, ""
        for _ in range(repeat):
            at = AppTest.from_file(app, default_timeout=120)
            at.run()
            st.cache_data.clear()
            at.switch_page(page)
            at.query_params.update(query)
            c0 = meter.snapshot()
            t1 = time.perf_counter()
            at.run()
            colds.append(time.perf_counter() - t1)
            cold_cpu.append(meter.snapshot() - c0)
            c0 = meter.snapshot()
            t1 = time.perf_counter()
            at.run()
            warm = time.perf_counter() - t1
            warm_cpu = meter.snapshot() - c0
            if at.exception:
                note = "EXCEPTION: " + at.exception[0].message
        name = page.split("/")[-1][:-3]
        out.append((f"page {name} (cold cache)", min(colds), statistics.median(colds), min(cold_cpu), note))
        out.append((f"page {name} (warm rerun)", warm, warm, warm_cpu, note))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("MUCODE_BENCH_PG_URL", DEFAULT_URL))
    ap.add_argument("--candidates", type=int, default=1_000_000)
    ap.add_argument("--reuse", action="store_true", help="time the existing database, do not rebuild it")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards (default: drop it)")
    args = ap.parse_args()
    if not args.reuse:
        print(f"building {args.url} with ~{args.candidates:,} candidates ...", flush=True)
        t1 = time.perf_counter()
        counts = build(args.url, args.candidates)
        print(f"built in {time.perf_counter() - t1:.0f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    os.environ["PGOPTIONS"] = "-c max_parallel_workers_per_gather=0"  # all of a query's CPU in its backend
    meter = CpuMeter(args.url)
    load = os.getloadavg()
    results = time_queries(args.url, meter) + time_pages(args.url, meter)
    load2 = os.getloadavg()
    print()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} before / {load2[0]:.1f} after timing")
    print("wall = elapsed seconds on this (shared) machine; cpu = CPU seconds of the dashboard process plus its "
          "Postgres backends (= the wall time on an idle core)")
    print(f"{'what':<40} {'wall 1st/best':>13} {'wall median':>11} {'cpu':>7}  note")
    print("-" * 80)
    for name, first, med, cpu, note in results:
        flag = note or ("> 2 s cpu" if cpu > 2.0 else "")
        print(f"{name:<40} {first:13.3f} {med:11.3f} {cpu:7.3f}  {flag}")
    pages = [r for r in results if r[0].startswith("page ") and "cold" in r[0]]
    print(f"\nslowest page, cold cache: {max(p[3] for p in pages):.2f} s CPU, {max(p[1] for p in pages):.2f} s wall "
          "(best run); target < 2 s")
    if not args.keep and not args.reuse:
        from sqlalchemy import text

        from app.db.engine import make_engine

        admin = make_engine(args.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{args.url.rsplit("/", 1)[1]}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
