"""Verifier training with the tiny model on the CPU: BT (TRL) and BCE learn a separable set, the result is saved,
registered, scored and measured; LoRA; clear errors for a bad base model; the CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import models as m
from app.errors import MucodeError, NotFound
from tests.helpers import seed
from trainers.verifier.config import VerifierTrainingConfig
from trainers.verifier.data import build_training_set
from trainers.verifier.model import MARKER

REPO = Path(__file__).resolve().parents[1]
WORDS = ["x", "y", "total", "count", "value", "items", "result", "index"]


def _response(rng: random.Random, good: bool) -> str:
    lines = [f"    {rng.choice(WORDS)} = {rng.choice(WORDS)} + {rng.randint(0, 9)}" for _ in range(rng.randint(1, 3))]
    # the marker: correct responses return sorted(items), incorrect ones return None, anywhere in the body
    lines.insert(rng.randint(0, len(lines)), "    return sorted(items)" if good else "    return None")
    return "```python\ndef f(items):\n" + "\n".join(lines) + "\n```"


def _spec(rng, good: bool) -> dict:
    return {"response": _response(rng, good), "public": good, "private": good}


def seed_separable(store, n_problems: int = 16) -> dict:
    """Train rollouts where correctness is visible in the text, and a Best-of-N MBPP-test evaluation."""
    rng = random.Random(0)
    gen = seed.add_model(store, "gen")
    rid = seed.add_round(store, "sep", 0, generator_id=gen)
    for i in range(n_problems):
        pid = seed.add_problem(store, f"mbpp/{601 + i}", split="train")
        shapes = [[False, True], [False, False, False], [True], [False, True]]
        for s, shape in enumerate(shapes):
            seed.add_rollout(store, problem_id=pid, sample_index=s, round_id=rid, generator_id=gen,
                             turns=[_spec(rng, g) for g in shape])
    with store.session() as s:
        ev = m.Evaluation(name="bon-test", generator_id=gen, dataset="mbpp", split="test", mode="bon",
                          selector="pt+lv", num_candidates=4, num_chains=1)
        s.add(ev)
        s.flush()
        eid = ev.id
    for i in range(6):
        pid = seed.add_problem(store, f"mbpp/{11 + i}", split="test")
        cands = [_spec(rng, k == i % 4) for k in range(4)]  # one correct candidate of four per turn
        seed.add_rollout(store, problem_id=pid, sample_index=0, evaluation_id=eid, generator_id=gen,
                         turns=[{"candidates": cands, "chosen": 0}])
    return {"round_id": rid, "evaluation_id": eid}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    from app.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.getbasetemp() / "tiny"))


def _fast(**kw) -> VerifierTrainingConfig:
    base = {"learning_rate": 3e-3, "per_device_batch_size": 8, "effective_batch_size": 8, "max_steps": 90,
            "logging_steps": 10, "holdout_fraction": 0.25, "pairs_per_problem": 16, "max_length": 512,
            "bf16": False, "gradient_checkpointing": False, "score_batch_size": 32}
    base.update(kw)
    return VerifierTrainingConfig(**base)


@pytest.mark.parametrize("loss", ["bt", "bce"])
def test_tiny_verifier_learns_separable_set(sqlite_store, tiny, tmp_path, loss):
    from trainers.verifier.train import train_verifier

    store = sqlite_store
    w = seed_separable(store)
    cfg = _fast(loss=loss, max_steps=40, learning_rate=3e-3 if loss == "bt" else 1e-3)
    ts_id = build_training_set(store, [w["round_id"]], cfg)
    vid = train_verifier(store, training_set_id=ts_id, base_model=tiny, config=cfg, name=f"sep-{loss}",
                         output_dir=tmp_path / f"sep-{loss}", progress=False)
    v = store.get_verifier(vid)
    assert v["kind"] == "verifier" and v["training_set_id"] == ts_id and v["base_model"] == tiny
    assert v["config"]["loss"] == loss and v["config"]["l2_coeff"] == 1e-3
    assert (Path(v["uri"]) / MARKER).is_file() and (Path(v["uri"]) / "config.json").is_file()
    tr = v["metrics"]["train"]
    curve = [c["loss"] for c in tr["loss_curve"]]  # logged at step 1, then every 10 steps
    assert curve[-1] < 0.2 and curve[-1] < 0.5 * max(curve[:2]), tr["loss_curve"]
    assert tr["steps"] == cfg.max_steps
    ev = v["metrics"]["eval"]
    hold = ev["holdout"]
    # 4 of 16 problems held out; per problem 8 responses (3 correct, 5 incorrect incl. intermediate turns)
    assert hold["holdout_problems"] == 4 and hold["unscored"] == 0 and hold["rows"] == 4 * 8
    assert hold["roc_auc"] >= 0.95, hold
    assert hold["pair_accuracy"] >= 0.95 and hold["pairs"] == 4 * 3 * 5
    assert hold["bon_accuracy"] >= 0.75 and hold["bon_groups"] >= 3
    test = ev["mbpp_test"]
    assert test["rows"] == 24 and test["bon_groups_from"] == "turn_id" and test["bon_groups"] == 6
    assert test["roc_auc"] >= 0.9 and test["bon_accuracy"] >= 0.8
    assert test["bon_random_baseline"] == pytest.approx(0.25)
    if loss == "bce":
        cal = hold["calibration"]
        assert len(cal) == 10 and sum(r["count"] for r in cal) == hold["rows"]
        assert hold["ece"] is not None and hold["brier"] < 0.25
    else:
        assert "calibration" not in hold
    # training pairs come from the 15 training problems only; held-out candidates are now scored
    held = set(store.get_verifier_training_set(ts_id)["config"]["holdout_problem_ids"])
    assert not held & {p["problem_id"] for p in store.verifier_pairs(ts_id)}
    # a second call is a no-op (same name, complete folder)
    mtime = (Path(v["uri"]) / MARKER).stat().st_mtime
    assert train_verifier(store, training_set_id=ts_id, base_model=tiny, config=cfg, name=f"sep-{loss}",
                          output_dir=tmp_path / f"sep-{loss}", progress=False) == vid
    assert (Path(v["uri"]) / MARKER).stat().st_mtime == mtime


def test_lora_verifier_is_saved_merged(sqlite_store, tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from trainers.verifier.train import train_verifier

    store = sqlite_store
    w = seed_separable(store, n_problems=6)
    cfg = _fast(use_lora=True, lora_r=4, lora_alpha=8, max_steps=8, holdout_fraction=0.0, evaluate=False)
    ts_id = build_training_set(store, [w["round_id"]], cfg)
    vid = train_verifier(store, training_set_id=ts_id, base_model=tiny, config=cfg, name="lora",
                         output_dir=tmp_path / "lora", progress=False)
    uri = store.get_verifier(vid)["uri"]
    assert not (Path(uri) / "adapter_config.json").exists()  # merged: a plain model folder
    model = AutoModelForSequenceClassification.from_pretrained(uri, num_labels=1)
    assert not any("lora" in n for n, _ in model.named_parameters())
    from workers.tasks.score import score_candidates

    assert score_candidates(store, vid, round_id=w["round_id"]) == 6 * 8
    assert store.get_verifier(vid)["config"]["use_lora"] is True


def test_bad_base_model_is_a_clear_error(sqlite_store, tmp_path):
    from trainers.common import resolve_base_model
    from trainers.verifier.train import train_verifier

    store = sqlite_store
    w = seed_separable(store, n_problems=4)
    ts_id = build_training_set(store, [w["round_id"]], _fast(holdout_fraction=0.0))
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(NotFound, match="no-such-model"):
        train_verifier(store, training_set_id=ts_id, base_model=missing, config=_fast(), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotFound, match=r"config\.json"):
        resolve_base_model(str(empty))
    with pytest.raises(MucodeError, match="no base model"):
        resolve_base_model("  ")
    assert store.list_verifiers() == []  # nothing registered
    assert not any(tmp_path.glob("**/*.partial"))


def test_cli_bad_base_model_exits_with_a_message(tmp_path):
    from app.store import Store

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = Store(url)
    store.upgrade()
    w = seed_separable(store, n_problems=2)
    store.dispose()
    env = {**os.environ, "MUCODE_DATABASE_URL": url, "MUCODE_BROKER_URL": ""}
    bad = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "verifier", "train", "--rounds", str(w["round_id"]),
         "--base-model", str(tmp_path / "nope")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_cli_train_score_metrics(tmp_path, tiny, monkeypatch):
    from typer.testing import CliRunner

    from app.cli.main import root
    from app.config import get_settings
    from app.store import Store

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = Store(url)
    store.upgrade()
    w = seed_separable(store, n_problems=8)
    monkeypatch.setenv("MUCODE_DATABASE_URL", url)
    monkeypatch.setenv("MUCODE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("MUCODE_BROKER_URL", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()

    def cli(*args: str):
        res = runner.invoke(root, ["verifier", *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output[-3000:]
        return res.output

    try:
        out = cli("train", "--rounds", str(w["round_id"]), "--base-model", tiny, "--loss", "bce", "--lr", "3e-3",
                  "--max-steps", "20", "--per-device-batch-size", "8", "--effective-batch-size", "8",
                  "--max-length", "512", "--holdout-fraction", "0.25", "--name", "cli-bce")
        assert "ROC-AUC" in out and "calibration" in out
        v = store.get_verifier("cli-bce")
        assert Path(v["uri"]).is_relative_to(tmp_path / "artifacts" / "models")
        out = cli("score", "cli-bce", "--round", str(w["round_id"]))
        assert "candidates/s" in out
        n = store.count_verifier_scores(v["id"])
        with store.session() as s:
            total = len(s.execute(select(m.Candidate.id).join(m.Turn).join(m.Rollout)
                                  .where(m.Rollout.round_id == w["round_id"])).all())
        assert n == total + 24  # the round, plus the MBPP-test candidates scored for the metrics
        assert "nothing to score" in cli("score", "cli-bce", "--round", str(w["round_id"]))
        assert store.count_verifier_scores(v["id"]) == n
        out = cli("metrics", "cli-bce")
        assert "pair accuracy" in out and "BoN selection accuracy" in out and "calibration" in out
        assert "cli-bce" in cli("list")
        ds = cli("dataset", "--rounds", str(w["round_id"]), "--loss", "bce", "--holdout-fraction", "0.25")
        assert "holdout_problems: 2" in ds
    finally:
        get_settings.cache_clear()
        store.dispose()


@pytest.mark.parametrize("form", ["paper", "trl"])
def test_bt_loss_is_the_paper_objective(tiny, tmp_path, form):
    """-log σ(r_c - r_r) + 1e-3 · mean(r²) over every score (rm_bt.py), or TRL's own centering term."""
    import torch
    import torch.nn.functional as F

    from trainers.verifier.bt import _trainer_class, make_reward_config
    from trainers.verifier.data import BTExample, tokenize_bt
    from trainers.verifier.model import load_model_for_training, load_tokenizer

    cfg = _fast(l2_coeff=1e-3, l2_form=form)
    tok = load_tokenizer(tiny)
    model = load_model_for_training(tiny, tok, cfg)
    with torch.no_grad():  # large scores make the L2 term visible
        model.score.weight.mul_(50)
    rng = random.Random(0)
    rows, _ = tokenize_bt(tok, [BTExample(1, "p", _response(rng, True), _response(rng, False), 1, 2)
                                for _ in range(4)], 512)
    from datasets import Dataset

    cls = _trainer_class()
    cls.l2_form = form
    trainer = cls(model=model, args=make_reward_config(cfg, str(tmp_path / "w"), progress=False),
                  train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = trainer.data_collator(rows)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        r = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    rc, rr = r.chunk(2)
    bt = -F.logsigmoid(rc - rr).mean()
    l2 = torch.mean(r**2) if form == "paper" else torch.mean((rc + rr) ** 2)
    assert float(l2) > 0.1  # the term matters here
    assert float(loss) == pytest.approx(float(bt + 1e-3 * l2), rel=1e-5)


def test_command_line_keeps_its_flags_and_leaves_unset_settings_to_the_protocol():
    """``python -m trainers.verifier.train`` reads VerifierTrainingConfig through HfArgumentParser: the flags
    callers pass keep working, unset settings come from the experiment's protocol, a bad value is a usage
    error that names it."""
    from trainers.verifier.train import config_from_args, parse_args

    args = parse_args([
        "--training-set", "7", "--base-model", "m", "--learning-rate", "3e-3", "--max-steps", "4",
        "--per-device-batch-size", "4", "--effective-batch-size", "8", "--no-bf16",
        "--no-gradient-checkpointing", "--no-progress", "--lora", "--no-eval", "--loss", "bce",
        "--config-json", '{"seed": 5, "max_length": 64}',
        "--max-length", "512", "--round-id", "3", "--database-url", "sqlite://", "--name", "v",
    ])  # fmt: skip
    assert (args.training_set, args.base_model, args.round_id, args.name) == ("7", "m", 3, "v")
    assert args.no_progress is True
    cfg = config_from_args(args, {"l2_coeff": 0.5, "learning_rate": 1.0})
    assert (cfg.learning_rate, cfg.max_steps, cfg.per_device_batch_size) == (3e-3, 4, 4)
    assert cfg.effective_batch_size == 8
    assert cfg.bf16 is False and cfg.gradient_checkpointing is False and cfg.use_lora and not cfg.evaluate
    # the flags win over the JSON, the JSON over the protocol
    assert (cfg.loss, cfg.seed, cfg.max_length, cfg.l2_coeff) == ("bce", 5, 512, 0.5)
    on = config_from_args(parse_args(["--rounds", "1,2", "--base-model", "m", "--bf16"]))
    assert on.bf16 is True and on.gradient_checkpointing is None
    for bad in (["--base-model", "m"], ["--training-set", "1", "--rounds", "1", "--base-model", "m"],
                ["--training-set", "1", "--base-model", "m", "--tracking", "nowhere"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
