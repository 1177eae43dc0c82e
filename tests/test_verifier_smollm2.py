"""A short real verifier training on the CPU with SmolLM2-135M-Instruct (``mucode models pull smollm2-135m-instruct``).

The data are real MBPP train problems (prompts built by ``app.env.build_prompt``) with hand-made responses:
the reference solution (correct) and mutated copies of it (incorrect), stored as rollouts through the seed
helper — labels by construction, not executed. It measures training time per 1k pairs and scoring
throughput (candidates/s), printed and stored in the verifier's metrics.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from app.config import get_settings
from tests.helpers import seed

# ~10 min on an idle 2-core CPU (30 min under load): opt-in with `-m smollm2`, not in the default run.
pytestmark = [pytest.mark.slow, pytest.mark.smollm2]
MODEL = "smollm2-135m-instruct"


def _pulled() -> bool:
    try:
        from app.model_registry import resolve_model

        resolve_model(MODEL)
        return True
    except Exception:  # noqa: BLE001
        return False


def _mutate(code: str, rng: random.Random) -> str:
    """A wrong version of a correct solution: a flipped operator, a wrong return, or a dropped last line."""
    swaps = [(" + ", " - "), (" < ", " > "), (" == ", " != "), (" - ", " + "), (" * ", " + "), (" > ", " < ")]
    rng.shuffle(swaps)
    for a, b in swaps:
        if a in code:
            return code.replace(a, b, 1)
    if re.search(r"return .+", code):
        return re.sub(r"return .+", "return None", code, count=1)
    return "\n".join(code.splitlines()[:-1]) or "pass"


def _fence(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def seed_mbpp(store, n_problems: int) -> int:
    from app.env import build_prompt

    path = get_settings().data_dir / "mbpp" / "mbpp.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if 601 <= r["task_id"] <= 974][:n_problems]
    gen = seed.add_model(store, "smol")
    rid = seed.add_round(store, "smol", 0, generator_id=gen)
    for r in train:
        prompt = build_prompt({"prompt": r["text"], "shown_tests": r["test_list"],
                               "setup_code": r.get("test_setup_code", "")})
        pid = seed.add_problem(store, f"mbpp/{r['task_id']}", prompt=prompt, public_tests=r["test_list"])
        good = _fence(r["code"])

        def bad(i: int, code: str = r["code"], tid: int = r["task_id"]) -> str:
            return _fence(_mutate(code, random.Random(f"{tid}/{i}"))) + ("\n" * (i % 2))

        shapes = [[bad(0), good], [bad(1), bad(2), bad(3)], [good], [bad(4), good]]
        for s, shape in enumerate(shapes):
            turns = [{"response": t, "public": t == good, "private": t == good} for t in shape]
            seed.add_rollout(store, problem_id=pid, sample_index=s, round_id=rid, generator_id=gen, turns=turns)
    return rid


@pytest.mark.timeout(3600)  # about 64 pairs x 2 sequences of ~350 tokens, forward and backward, on 2 cores
@pytest.mark.skipif(not _pulled(), reason=f"{MODEL} is not pulled (mucode models pull {MODEL})")
def test_smollm2_short_bt_training_on_cpu(sqlite_store, tmp_path):
    import torch

    from trainers.verifier.config import VerifierTrainingConfig
    from trainers.verifier.data import build_training_set
    from trainers.verifier.train import train_verifier
    from workers.tasks.score import score_candidates

    torch.manual_seed(0)
    store = sqlite_store
    rid = seed_mbpp(store, n_problems=10)
    cfg = VerifierTrainingConfig(
        pairs_per_problem=8, holdout_fraction=0.2, learning_rate=1e-5, epochs=1.0, per_device_batch_size=4,
        effective_batch_size=16, max_length=1024, bf16=False, gradient_checkpointing=False, logging_steps=1,
        score_batch_size=16,
    )
    ts_id = build_training_set(store, [rid], cfg)
    assert store.get_verifier_training_set(ts_id)["num_pairs"] == 64
    vid = train_verifier(store, training_set_id=ts_id, base_model=MODEL, config=cfg, name="smol-bt",
                         output_dir=tmp_path / "smol-bt", progress=False)
    v = store.get_verifier(vid)
    tr = v["metrics"]["train"]
    assert tr["pairs"] == 64 and tr["steps"] == 4 and all(c["loss"] == c["loss"] for c in tr["loss_curve"])
    hold = v["metrics"]["eval"]["holdout"]
    assert hold["rows"] == 2 * 8 and hold["unscored"] == 0
    # scoring throughput on the whole round (the held-out ones are scored already: score the rest)
    stats: dict = {}
    written = score_candidates(store, vid, round_id=rid, batch_size=16, stats=stats)
    assert written == 10 * 8 - 2 * 8
    assert score_candidates(store, vid, round_id=rid) == 0
    report = {
        "train_seconds": tr["seconds"],
        "seconds_per_1k_pairs": tr["seconds_per_1k_pairs"],
        "train_cpu_seconds": tr["cpu_seconds"],
        "scoring_candidates_per_s": stats["candidates_per_s"],
        "scored": stats["todo"],
        "scoring_model_seconds": stats["model_seconds"],
        "scoring_cpu_seconds": stats["cpu_seconds"],
        "holdout_roc_auc": hold["roc_auc"],
        "loss_curve": [round(c["loss"], 4) for c in tr["loss_curve"]],
        "threads": torch.get_num_threads(),
    }
    print("\nSMOLLM2 VERIFIER", json.dumps(report))
    store.set_verifier_metrics(vid, {"cpu_benchmark": report})
