"""Benchmark: tokens/s through the whole collection pipeline against bare ``backend.generate``.

One run measures both on the same prompts and seeds:

- **pipeline**: a collection of ``--problems`` MBPP train problems x ``-M`` rollouts x ``-T`` turns through the
  real system -- store (Postgres, or SQLite with ``--db sqlite``), broker (a private Redis database), a
  ``sample`` worker and an ``execute`` worker as separate Celery processes, the sandbox, feedback, next turns
  (``--mode embedded`` runs the same jobs in-process instead: no broker, no overlap). The workers are warmed
  up first (model loaded, sandbox started) by a small collection, so neither side pays the model load. Time runs
  from ``start`` to the last job's end.
- **bare**: the same conversations (every sampled turn, read back from the store) with the same seeds, grouped
  exactly as the pipeline grouped them (one call per batch and turn), through ``backend.generate`` in this
  process -- nothing else. The generated token counts must match (same prompts + same seeds = same tokens).

Prints both rates and their ratio (goal: pipeline >= 0.95 x bare with the transformers backend on CPU).

    python bench/collect.py                       # SmolLM2-135M if pulled, else the tiny model
    python bench/collect.py --problems 16 -M 2 -T 2 --max-new-tokens 96 --batch-size 8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMOLLM = Path.home() / ".cache" / "mucode" / "models" / "smollm2-135m-instruct"
PG_ADMIN = os.environ.get("MUCODE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: SmolLM2-135M if pulled, else tiny)")
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("-M", type=int, default=2)
    p.add_argument("-T", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument(
        "--batch-size", type=int, default=8, help="rollouts per batch (one generate call per turn)"
    )
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--mode", choices=["celery", "embedded"], default="celery")
    p.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads for both sides (default: torch's)"
    )
    p.add_argument("--execute-nice", type=int, default=0, help="run the execute worker at this nice level")
    p.add_argument("--repeat", type=int, default=1, help="pipeline + bare pairs, each with its own seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args()


def pick_model(arg: str | None, workdir: Path) -> tuple[str, str]:
    if arg:
        from app.model_registry import resolve_model

        return resolve_model(arg), arg
    if (SMOLLM / "config.json").exists():
        return str(SMOLLM), "SmolLM2-135M-Instruct (pulled)"
    from app.tiny_model import build_tiny_model

    return str(build_tiny_model(workdir / "tiny")), "tiny random Llama (SmolLM2 not pulled)"


def scratch_url(kind: str, workdir: Path, stack) -> str:
    """A throw-away database for the run: a new Postgres database (dropped at the end) or a SQLite file."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}"
    from app.db.engine import scratch_database

    return stack.enter_context(scratch_database(PG_ADMIN, "mucode_bench"))


def make_collection(
    store, model: str, name: str, problems: int, M: int, T: int, max_new: int, batch: int, temperature: float,
    seed: int = 1,
):  # fmt: skip
    from app.store.rollouts import Owner
    from workers.collect import CollectSpec, create_collection, dataset_problem_ids

    gen = store.ensure_model_version(model, "generator", model, model)
    spec = CollectSpec(
        turns=T, samples_per_problem=M, temperature=temperature, max_new_tokens=max_new, batch_size=batch,
        seed=seed,
    )  # fmt: skip
    ev = store.create_evaluation(
        name, generator_id=gen, dataset="mbpp", split="train", mode="collect", num_chains=M, max_turns=T,
        config=spec.model_dump(mode="json"),
    )  # fmt: skip
    owner = Owner(evaluation_id=ev)
    ids = dataset_problem_ids(store, "mbpp", "train", problems)
    create_collection(store, owner, ids, spec, generator_id=gen)
    return owner, spec


def run_pipeline(store, owner, mode: str) -> dict:
    from workers import collect

    t0 = datetime.now(UTC)
    w0 = time.perf_counter()
    collect.start(store, owner)
    if mode == "celery":
        # poll lightly (one row, once a second): the end time comes from the jobs' own timestamps
        polls = 0
        while store.get_job(collect.collect_key(owner)).state != "done":
            time.sleep(1.0)
            polls += 1
            if polls % 10 == 0 and (failed := collect.status(store, owner)["failed_jobs"]):
                raise SystemExit(f"pipeline jobs failed: {failed}")
        jobs = store.list_jobs(key_prefix=collect.collect_key(owner) + "/")
        end = max(j.finished_at for j in jobs if j.finished_at is not None)
        seconds = (end - t0).total_seconds()
    else:
        seconds = time.perf_counter() - w0
    jobs = store.list_jobs(key_prefix=collect.collect_key(owner) + "/", kinds=["sample"])
    counts = store.collection_counts(owner)
    generate = sum((j.result or {}).get("generate_seconds", 0.0) for j in jobs)
    return {
        "seconds": seconds,
        "tokens": counts["completion_tokens"],
        "candidates": counts["candidates"],
        "turns": counts["turns"],
        "solved": counts["solved"],
        "sample_jobs": len(jobs),
        "sample_job_seconds": round(sum((j.result or {}).get("seconds", 0.0) for j in jobs), 2),
        "generate_seconds": round(generate, 2),
        "generate_share_of_wall": round(generate / seconds, 3) if seconds else None,
    }


def planned_first_turns(store, owner, spec) -> dict[tuple[int, int], list[dict]]:
    """Turn 1 of every rollout, grouped by batch as the pipeline will sample it (before it runs)."""
    from app.env import initial_messages
    from workers.collect import batches, turn_seed

    groups: dict[tuple[int, int], list[dict]] = {}
    for b, (ids, _) in enumerate(batches(store, owner, spec.batch_size)):
        states = store.batch_state(ids)
        problems = store.collection_problems(r.problem_id for r in states)
        groups[(b, 1)] = [
            {"rollout_id": r.id, "index": 1, "messages": initial_messages(problems[r.problem_id]),
             "seed": turn_seed(r.seed, 1)}
            for r in states
        ]  # fmt: skip
    return groups


def sampled_turns(store, owner, spec) -> dict[tuple[int, int], list[dict]]:
    """Every sampled turn (read back from the store), grouped by (batch, turn) as the pipeline sampled it."""
    from workers.collect import batches

    batch_of = {rid: b for b, (ids, _) in enumerate(batches(store, owner, spec.batch_size)) for rid in ids}
    groups: dict[tuple[int, int], list[dict]] = {}
    for s in store.collection_samples(owner):
        s["seed"] = int(s["sampling"]["seed"])
        groups.setdefault((batch_of[s["rollout_id"]], s["index"]), []).append(s)
    return groups


def run_bare(groups: dict[tuple[int, int], list[dict]], spec, backend) -> dict:
    """The same conversations and seeds through backend.generate, one call per group, in pipeline order."""
    from workers.backends.base import SamplingParams

    params = SamplingParams(
        temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens, n=spec.candidates
    )
    tokens = 0
    seconds = 0.0
    per_turn: dict[tuple[int, int], list[int]] = {}
    for key in sorted(groups, key=lambda k: (k[1], k[0])):  # every batch's turn 1, then turns 2...
        group = groups[key]
        t = time.perf_counter()
        out = backend.generate([g["messages"] for g in group], params, [g["seed"] for g in group])
        seconds += time.perf_counter() - t
        for g, outs in zip(group, out, strict=True):
            per_turn[(g["rollout_id"], g["index"])] = [o.completion_tokens for o in outs]
            tokens += sum(per_turn[(g["rollout_id"], g["index"])])
    return {"seconds": seconds, "tokens": tokens, "calls": len(groups), "per_turn": per_turn}


def same_tokens(bare: dict, store, owner, spec) -> bool:
    stored = {(g["rollout_id"], g["index"]): g["completion_tokens"] for gs in sampled_turns(store, owner, spec).values()
              for g in gs}  # fmt: skip
    return stored == bare["per_turn"]


def one_repeat(r: int, args, store, model: str, backend) -> tuple[dict[str, Any], Any]:
    """One timed repeat: the pipeline and bare ``generate`` over the same prompts and seeds."""
    # a new seed per repeat: other samples, so the execution cache does not help later repeats
    owner, spec = make_collection(
        store, model, f"bench-{r}", args.problems, args.M, args.T, args.max_new_tokens, args.batch_size,
        args.temperature, seed=r + 1,
    )  # fmt: skip
    # ABBA: with T = 1 the prompts are known before sampling, so odd repeats run bare first (drift of a
    # shared machine's load then hits both sides alike); later turns can only be replayed afterwards
    if args.T == 1 and r % 2 == 1:
        bare = run_bare(planned_first_turns(store, owner, spec), spec, backend)
        pipe = run_pipeline(store, owner, args.mode)
    else:
        pipe = run_pipeline(store, owner, args.mode)
        bare = run_bare(sampled_turns(store, owner, spec), spec, backend)
    bare["same_tokens_as_pipeline"] = same_tokens(bare, store, owner, spec)
    del bare["per_turn"]
    pipe["tokens_per_s"] = round(pipe["tokens"] / pipe["seconds"], 2)
    bare["tokens_per_s"] = round(bare["tokens"] / bare["seconds"], 2)
    run = {"pipeline": pipe, "bare": bare, "ratio": round(pipe["tokens_per_s"] / bare["tokens_per_s"], 3)}
    if not args.json:
        print(
            f"[{r + 1}/{args.repeat}] bare {bare['tokens']} tokens {bare['seconds']:.1f} s "
            f"{bare['tokens_per_s']:.2f} tok/s | pipeline {pipe['tokens']} tokens {pipe['seconds']:.1f} s "
            f"{pipe['tokens_per_s']:.2f} tok/s | ratio {run['ratio']:.3f} | generate share of "
            f"pipeline wall {pipe['generate_share_of_wall']}",
            flush=True,
        )
    return run, spec


def summarize(args, runs: list[dict[str, Any]], spec, model_label: str, torch_threads: int) -> dict[str, Any]:
    tot = {
        side: {
            "tokens": sum(x[side]["tokens"] for x in runs),
            "seconds": round(sum(x[side]["seconds"] for x in runs), 2),
        }
        for side in ("bare", "pipeline")
    }
    for t in tot.values():
        t["tokens_per_s"] = round(t["tokens"] / t["seconds"], 2)
    ratios = sorted(x["ratio"] for x in runs)
    return {
        "model": model_label, "backend": spec.backend, "mode": args.mode, "db": args.db,
        "problems": args.problems, "M": args.M, "T": args.T, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "execute_nice": args.execute_nice, "cpus": os.cpu_count(),
        "torch_threads": torch_threads, "load_average": os.getloadavg(), "runs": runs, "total": tot,
        "ratio_total": round(tot["pipeline"]["tokens_per_s"] / tot["bare"]["tokens_per_s"], 3),
        "ratio_median": ratios[len(ratios) // 2],
    }  # fmt: skip


def print_summary(args, result: dict[str, Any]) -> None:
    print(
        f"model {result['model']}; {args.problems} MBPP train problems x M={args.M}, T={args.T}, "
        f"max_new_tokens={args.max_new_tokens}, batch {args.batch_size}; mode {args.mode}, db {args.db}, "
        f"torch threads {result['torch_threads']}, load average {os.getloadavg()[0]:.1f}"
    )
    for label, side in (("bare generate", "bare"), ("pipeline", "pipeline")):
        t = result["total"][side]
        print(f"{label:14s}: {t['tokens']:6d} tokens in {t['seconds']:8.2f} s = {t['tokens_per_s']:8.2f} tok/s")
    print(
        f"ratio pipeline/bare: {result['ratio_total']:.3f} over all runs, median {result['ratio_median']:.3f}"
        " (goal >= 0.95)"
    )
    if not all(x["bare"]["same_tokens_as_pipeline"] for x in result["runs"]):
        print("note: token counts differ: the same prompts and seeds should give the same tokens")


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mucode-bench-collect-"))
    from contextlib import ExitStack

    stack = ExitStack()
    url = scratch_url(args.db, workdir, stack)
    os.environ["MUCODE_DATABASE_URL"] = url
    os.environ.pop("MUCODE_BROKER_URL", None)
    thread_env = {}
    if args.threads:
        thread_env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        os.environ.update(thread_env)
    store = None
    try:
        if args.mode == "celery":
            from tests.helpers.workers import celery_workers, redis_db

            broker = stack.enter_context(redis_db())
            os.environ["MUCODE_BROKER_URL"] = broker  # before workers.celery_app is imported
        from app.config import get_settings

        get_settings.cache_clear()
        from app.datasets.registry import load_dataset
        from app.store import Store

        model, model_label = pick_model(args.model, workdir)
        store = Store(url)
        store.upgrade()
        load_dataset(store, "mbpp")
        if args.mode == "celery":
            workers = stack.enter_context(celery_workers(url, broker, log_dir=workdir, extra_env=thread_env))
            workers.start("sample")
            workers.start("execute", nice=args.execute_nice)
        warm, _ = make_collection(store, model, "warmup", 2, 1, 1, 8, args.batch_size, args.temperature)
        run_pipeline(store, warm, args.mode)  # loads the model in the sample worker, starts the sandbox

        import torch

        from workers.backends import get_backend
        from workers.backends.base import SamplingParams

        if args.threads:
            torch.set_num_threads(args.threads)
        backend = get_backend("transformers", model)
        backend.generate([[{"role": "user", "content": "warm up"}]], SamplingParams(0.7, max_tokens=4), [0])
        runs, spec = [], None
        for r in range(args.repeat):
            run, spec = one_repeat(r, args, store, model, backend)
            runs.append(run)
        result = summarize(args, runs, spec, model_label, torch.get_num_threads())
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print_summary(args, result)
    finally:
        if store is not None:
            store.dispose()
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
