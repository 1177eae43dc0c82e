"""Fault injection on a real stack: rounds that heal themselves, with the same content as a fault-free run.

Each scenario runs one small round (the tiny model that knows some answers, 3 train and 3 test problems) on its
own PostgreSQL and Redis servers (started here, on free ports) with real ``mucode worker`` processes (GPU queues
sample+score+train, execute, control), injects one fault at a chosen point, and waits for the round to finish
**without** ``round resume``. Then it compares a digest of everything the round stored (rollouts, turns,
candidates, verdicts, verifier scores, SFT examples, evaluation results, keyed by content, not ids) with the
fault-free run's.

Faults:
- ``postgres``: the database stops like a crash (``pg_ctl -m immediate``) mid-collect for 10 s, then comes back;
- ``redis``: the broker is killed mid-collect and restarted 5 s later without its data (every queued message lost);
- ``redis-aof``: the same with an append-only file (the queued messages come back; the jobs that were running
  are found by the healer);
- ``kill-collect``: the GPU worker gets SIGKILL mid-collect; a fresh one starts;
- ``kill-train``: the GPU worker gets SIGKILL while it trains the verifier; a fresh one starts.

The healer's timings are shortened (heartbeat 1 s, sweep 2 s, grace 6 s) as in the tests; with the defaults
(10 s, 20 s, 60 s) add about 90 s to each heal.

    python bench/fault_injection.py                      # every scenario
    python bench/fault_injection.py --faults kill-train  # one
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' service helpers, when run as `python bench/fault_injection.py`

from tests.helpers.cli import run_mucode, wait_for  # noqa: E402
from tests.helpers.services import private_postgres, private_redis  # noqa: E402
from tests.helpers.workers import celery_workers  # noqa: E402

FAST = {"MUCODE_HEARTBEAT_S": "1", "MUCODE_HEALER_SWEEP_S": "2", "MUCODE_HEALER_GRACE_S": "6"}
GPU = "sample,score,train"
SCENARIOS = ("none", "postgres", "redis", "redis-aof", "kill-collect", "kill-train")


def digest(store, experiment: str) -> dict[str, str]:
    """One sha256 per table of what the round stored, over content in content order (ids and times left out)."""
    from sqlalchemy import text

    own = "left join evaluations e on e.id = r.evaluation_id join problems p on p.id = r.problem_id"
    queries = {
        "rollouts": f"select coalesce(e.name, 'round'), p.external_id, r.sample_index, r.status, r.final_label "
                    f"from rollouts r {own} order by 1, 2, 3",
        "turns": f"select coalesce(e.name, 'round'), p.external_id, r.sample_index, t.\"index\", t.feedback "
                 f"from turns t join rollouts r on r.id = t.rollout_id {own} order by 1, 2, 3, 4",
        "candidates": f"select coalesce(e.name, 'round'), p.external_id, r.sample_index, t.\"index\", "
                      f"c.sample_index, c.code_hash, c.public_passed, c.private_passed, c.chosen from candidates c "
                      f"join turns t on t.id = c.turn_id join rollouts r on r.id = t.rollout_id {own} "
                      f"order by 1, 2, 3, 4, 5",
        "scores": "select c.code_hash, mv.name, round(cast(s.score as numeric), 4) from verifier_scores s "
                  "join candidates c on c.id = s.candidate_id join model_versions mv on mv.id = s.verifier_id "
                  "order by 1, 2, 3",
        "sft_examples": "select p.external_id, x.turn_index, x.source, c.code_hash from sft_examples x "
                        "join problems p on p.id = x.problem_id "
                        "join candidates c on c.id = x.target_candidate_id order by 1, 2, 3, 4",
        "evaluation_results": "select e.name, p.external_id, er.chain_index, er.turn_index, er.solved from "
                              "evaluation_results er join evaluations e on e.id = er.evaluation_id join problems p "
                              "on p.id = er.problem_id order by 1, 2, 3, 4",
        "models": "select name, kind, uri from model_versions where name like 'x%' "
                  "and kind in ('verifier', 'generator') order by 1",
    }
    out = {}
    with store.engine.connect() as conn:
        for name, sql in queries.items():
            try:
                rows = conn.execute(text(sql)).fetchall()
            except Exception as exc:  # noqa: BLE001 - a column named otherwise: say so in the digest
                conn.rollback()
                out[name] = f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
                continue
            if name == "models":  # the trained weights themselves (the same data gives the same model)
                for r in rows:
                    out[f"weights {r[1]}"] = _weights_hash(r[2])
                continue
            h = hashlib.sha256(json.dumps([list(map(str, r)) for r in rows]).encode()).hexdigest()[:16]
            out[name] = f"{len(rows)} rows {h}"
    return out


def _weights_hash(uri: str) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(uri).glob("*.safetensors")) if uri and Path(uri).is_dir() else []:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run(fault: str, model: str, tmp: Path) -> dict[str, object]:
    from app.store import Store
    from app.store.rollouts import Owner
    from tests.helpers.collect import load_mbpp
    from tests.test_rounds import small_config

    tmp.mkdir(parents=True, exist_ok=True)
    with private_postgres(tmp) as pg, private_redis(tmp, persist=fault == "redis-aof") as rd:
        store = Store(pg.url)
        store.upgrade()
        load_mbpp(store)
        env = {"MUCODE_DATABASE_URL": pg.url, "MUCODE_BROKER_URL": rd.url,
               "MUCODE_ARTIFACTS_DIR": str(tmp / "art"), **FAST}
        cfg = tmp / "cfg.json"
        cfg.write_text(json.dumps(small_config(model)))
        with celery_workers(pg.url, rd.url, log_dir=tmp, extra_env=env) as workers:
            gpu = workers.start(GPU)
            workers.start("execute")
            workers.start("control")
            run_mucode(["experiment", "create", "x", "--config", str(cfg)], env, ok=True, timeout=900, cwd=ROOT)
            t0 = time.monotonic()
            run_mucode(["round", "run", "x"], env, ok=True, timeout=900, cwd=ROOT)
            rid = store.experiment_rounds(store.get_experiment("x").id)[0].id

            def candidates() -> int:
                try:
                    return store.collection_counts(Owner(round_id=rid))["candidates"]
                except Exception:  # noqa: BLE001 - not created yet, or the database is down
                    return 0

            def step_state(step: str) -> str:
                try:
                    return (store.get_round(rid).steps or {}).get(step, {}).get("state", "")
                except Exception:  # noqa: BLE001
                    return ""

            cleared = None
            if fault in ("postgres", "redis", "redis-aof", "kill-collect"):
                wait_for(lambda: candidates() >= 2, 300, "the first candidates")
            if fault == "postgres":
                pg.stop("immediate")
                time.sleep(10)
                pg.start()
            elif fault in ("redis", "redis-aof"):
                rd.stop()
                time.sleep(5)
                rd.start()
            elif fault == "kill-collect":
                gpu.kill()
                workers.start(GPU)
            elif fault == "kill-train":
                wait_for(lambda: step_state("train_verifier") == "running", 600, "the verifier training")
                time.sleep(1.0)
                gpu.kill()
                workers.start(GPU)
            if fault != "none":
                cleared = time.monotonic()

            def finished() -> bool:
                try:
                    return store.get_round(rid).status in ("done", "failed")
                except Exception:  # noqa: BLE001
                    return False

            wait_for(finished, 1200, f"the round to finish ({fault})")
            rnd = store.get_round(rid)
            heals = {s: r.get("heals") for s, r in (rnd.steps or {}).items() if r.get("heals")}
            out = {"fault": fault, "status": rnd.status, "round_s": round(time.monotonic() - t0, 1),
                   "after_fault_s": round(time.monotonic() - cleared, 1) if cleared else None,
                   "heals": heals, "digest": digest(store, "x"), "error": rnd.error}
        store.dispose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", default=",".join(SCENARIOS[1:]),
                    help=f"comma-separated, of {', '.join(SCENARIOS[1:])} (the fault-free run always comes first)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    from tests.helpers.rounds import knowing_model_path
    from tests.test_rounds import P_TEST, P_TRAIN

    model = str(knowing_model_path(P_TRAIN, P_TEST))
    faults = ["none", *[f for f in args.faults.split(",") if f and f != "none"]]
    results = []
    with tempfile.TemporaryDirectory(prefix="mucode-faults-") as tmp:
        for fault in faults:
            res = run(fault, model, Path(tmp) / fault)
            results.append(res)
            print(json.dumps(res), flush=True)
    base = results[0]["digest"]
    print(f"\n{'fault':<14}{'status':<8}{'round s':>9}{'healed in s':>13}  heals                  same content")
    for r in results:
        same = "baseline" if r is results[0] else ("yes" if r["digest"] == base else
                                                   "NO: " + ", ".join(k for k in base if r["digest"].get(k) != base[k]))
        heals = ", ".join(f"{k} x{v}" for k, v in r["heals"].items()) or "-"
        healed = f"{r['after_fault_s']:.1f}" if r["after_fault_s"] is not None else "-"
        print(f"{r['fault']:<14}{r['status']:<8}{r['round_s']:>9.1f}{healed:>13}  {heals:<22} {same}")
    print("\nbaseline digest: " + json.dumps(base))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["status"] == "done" and r["digest"] == base for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
