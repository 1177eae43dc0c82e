"""Train a verifier from a stored training set, save it, register it, and measure it.

    python -m trainers.verifier.train --training-set ID --base-model M [--loss bt|bce] [--lora] ...
    accelerate launch --num_processes 4 [--config_file trainers/verifier/accelerate_zero3.yaml] \
        -m trainers.verifier.train --training-set ID --base-model M

(``--rounds 1,2`` or ``--experiment NAME [--round-index N]`` build the training set first.)

Steps: check the set (kind, split hygiene) → resolve the base model (a bad path fails before any loading) →
read the stored pairs/rows and tokenize ([first user message, response] only) → BT (TRL RewardTrainer) or BCE
→ save to ``settings.artifacts_dir/models/<name>`` (atomically) → register a ``ModelVersion(kind="verifier")``
with its config and training metrics → score the held-out and MBPP-test candidates and store the metrics.
A verifier whose name is registered with a complete model folder is not trained again (a redelivered job is a
no-op); a run killed mid-training continues from its last complete checkpoint (``--checkpoint-steps``, beside
the model folder; ``trainers/checkpoints.py``). Under ``accelerate launch`` every process trains; the main
process saves, registers and evaluates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.errors import MucodeError
from trainers.verifier.config import VerifierTrainingConfig


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _console():
    from rich.console import Console

    return Console(stderr=True, quiet=not _is_main())


def default_verifier_name(store, ts: dict[str, Any], loss: str, round_id: int | None) -> str:
    rid = round_id if round_id is not None else ts.get("round_id")
    if rid is not None:
        info = store.verifier_round_info(rid)
        return f"{info['experiment']}-r{info['index']}-verifier-{loss}"
    return f"verifier-{loss}-ts{ts['id']}"


def train_verifier(
    store,
    *,
    training_set_id: int | str,
    base_model: str,
    config: VerifierTrainingConfig | None = None,
    name: str | None = None,
    round_id: int | None = None,
    output_dir: str | Path | None = None,
    progress: bool = True,
) -> int:
    """Train, save, register and evaluate a verifier; returns its model version id (idempotent by name)."""
    from app.config import get_settings
    from trainers.checkpoints import checkpoints_dir
    from trainers.checkpoints import remove as remove_checkpoints
    from trainers.verifier import data as D
    from trainers.verifier.common import world_size
    from trainers.verifier.model import is_complete, resolve_base_model

    console = _console()
    config = dataclasses.replace(config) if config is not None else VerifierTrainingConfig()  # a copy: adjusted below
    ts = store.get_verifier_training_set(training_set_id)
    if ts["kind"] != config.loss:
        raise MucodeError(f"training set {ts['name']!r} holds {ts['kind']} data, but the loss is {config.loss}")
    # the set decides the data fields: record what was actually used
    for k in ("pairs_per_problem", "pair_sampling", "holdout_fraction", "seed"):
        if k in ts["config"]:
            setattr(config, k, ts["config"][k])
    leaks = store.verifier_training_set_leaks(ts["id"])
    if leaks:
        raise MucodeError(
            f"training set {ts['name']!r} holds {len(leaks)} candidate(s) of non-training problems "
            f"(test/validation/HumanEval), e.g. {leaks[:5]}: refusing to train"
        )
    name = name or default_verifier_name(store, ts, config.loss, round_id)
    existing = store.get_verifier(name, required=False)
    if existing is not None and is_complete(existing["uri"]):
        console.print(f"verifier [bold]{name}[/] is already trained ({existing['uri']}): nothing to do")
        return existing["id"]
    model_path = resolve_base_model(base_model)
    tracker, tags = _tracking(store, config, ts, round_id, name)  # a missing tracker package fails here, not later
    out_dir = Path(output_dir) if output_dir else get_settings().artifacts_dir / "models" / name
    out_dir = out_dir.resolve()

    from trainers.verifier.model import load_model_for_training, load_tokenizer

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(model_path)
    if config.loss == "bt":
        examples = D.load_bt_examples(store, ts["id"])
        rows, dropped = D.tokenize_bt(tokenizer, examples, config.max_length)
    else:
        examples = D.load_bce_examples(store, ts["id"])
        rows, dropped = D.tokenize_bce(tokenizer, examples, config.max_length)
    if not rows:
        raise MucodeError(f"every example of {ts['name']!r} is longer than max_length={config.max_length}")
    console.print(
        f"[bold]{name}[/]: {config.loss} on {len(rows)} {'pairs' if config.loss == 'bt' else 'rows'} "
        f"of training set {ts['name']} (dropped {dropped} over {config.max_length} tokens), base {model_path}"
    )
    model = load_model_for_training(model_path, tokenizer, config)
    ckpt_dir = checkpoints_dir(out_dir)
    if config.loss == "bt":
        from trainers.verifier.bt import train_bt as run
    else:
        from trainers.verifier.bce import train_bce as run
    identity = {
        **{k: v for k, v in config.to_dict().items() if k not in _NOT_IN_RUN},
        "training_set_id": ts["id"], "base_model_path": model_path, "world_size": world_size(),
        "examples": len(rows),
    }
    from app.tracking import environment as tracking_environment

    with tracking_environment(tracker, config.run_name or name, tags):
        trainer, summary = run(model, tokenizer, rows, config, str(ckpt_dir), dropped=dropped, progress=progress,
                               run=identity)
    summary["prepare_seconds"] = round(time.perf_counter() - t0 - summary["seconds"], 3)

    meta = {
        "name": name,
        "loss": config.loss,
        "base_model": base_model,
        "base_model_path": model_path,
        "training_set_id": ts["id"],
        "training_set": ts["name"],
        "config": config.to_dict(),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    scorer_model = _save(trainer, tokenizer, out_dir, meta, config)
    if not _is_main():
        return -1
    vid = store.add_verifier_version(
        name=name,
        base_model=base_model,
        uri=str(out_dir),
        config=config.to_dict(),
        metrics={"train": summary},
        round_id=round_id if round_id is not None else ts.get("round_id"),
        training_set_id=ts["id"],
    )
    remove_checkpoints(ckpt_dir)  # only now: a run killed before registering trains again, from a checkpoint
    console.print(
        f"saved {out_dir} and registered verifier id {vid}: loss {summary['first_loss']} -> "
        f"{summary['final_loss']} in {summary['steps']} steps, {summary['seconds']} s"
    )
    if config.evaluate:
        from trainers.verifier.evaluate import evaluate_verifier
        from trainers.verifier.scorer import VerifierScorer

        scorer = None
        if scorer_model is not None:
            scorer = VerifierScorer(scorer_model, tokenizer, batch_size=config.score_batch_size,
                                    max_length=config.max_length)
        result = evaluate_verifier(store, vid, scorer=scorer, progress=progress)
        for part in ("holdout", "mbpp_test"):
            r = result.get(part)
            if r:
                console.print(
                    f"{part}: ROC-AUC {_fmt(r['roc_auc'])}, pair accuracy {_fmt(r['pair_accuracy'])} "
                    f"({r['pairs']} pairs), BoN@{r['bon_n']} {_fmt(r['bon_accuracy'])} ({r['bon_groups']} groups)"
                )
    return vid


# Settings that change nothing the optimizer sees: checkpoints written under other values stay resumable.
_NOT_IN_RUN = {"checkpoint_steps", "logging_steps", "score_batch_size", "bon_n", "calibration_bins",
               "evaluate", "extra", "tracking", "tracking_uri", "run_name"}


def _tracking(store, config: VerifierTrainingConfig, ts: dict[str, Any], round_id: int | None, name: str):
    """The run's tracker (its own setting, else its experiment's, else the environment's), written into
    ``config`` so that the stored config says where the curves went; and the tags of its run."""
    from app.tracking import require, resolve

    rid = round_id if round_id is not None else ts.get("round_id")
    experiment, stored, tags = None, None, {"model": name, "kind": "verifier", "training_set": ts["name"]}
    if rid is not None:
        info = store.verifier_round_info(rid)
        exp = store.get_experiment(int(info["experiment_id"]))
        experiment, stored = exp.name, exp.config
        tags.update(experiment=exp.name, round=info["index"])
    tracker = resolve(stored, experiment=experiment, backend=config.tracking, uri=config.tracking_uri)
    require(tracker.backend)
    config.tracking, config.tracking_uri = tracker.backend, tracker.uri
    config.run_name = config.run_name or name
    return tracker, tags


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _save(trainer, tokenizer, out_dir: Path, meta: dict[str, Any], config: VerifierTrainingConfig):
    """Save the trained verifier; returns the in-memory model to score with (None when it must be reloaded)."""
    import shutil

    import torch

    from trainers.verifier.common import use_bf16, world_size
    from trainers.verifier.model import save_verifier, unwrap_peft, write_marker

    model = trainer.accelerator.unwrap_model(trainer.model)
    if world_size() == 1 or config.use_lora:
        if not _is_main():
            return None
        merged = unwrap_peft(model)
        if use_bf16(config):
            merged = merged.to(torch.bfloat16)
        save_verifier(merged, tokenizer, out_dir, meta)
        return merged if world_size() == 1 else None
    # several processes (DDP or DeepSpeed ZeRO-3): save_model gathers the shards; every rank must call it
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if _is_main() and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if _is_main():
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, meta)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    trainer.accelerator.wait_for_everyone()
    return None


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.verifier.train", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--training-set", help="id or name of a stored verifier training set")
    src.add_argument("--rounds", help="comma-separated round ids: build (or reuse) their training set first")
    src.add_argument("--experiment", help="experiment name: its rounds (up to --round-index) are the data")
    p.add_argument("--round-index", type=int, default=None, help="with --experiment: rounds 0..N")
    p.add_argument("--base-model", required=True, help="hub name, local path or pulled model name")
    p.add_argument("--loss", choices=["bt", "bce"], default=None)
    p.add_argument("--lora", action="store_true", default=None)
    p.add_argument("--name", default=None, help="verifier name (default: derived from the round or set)")
    p.add_argument("--round-id", type=int, default=None, help="the round this verifier belongs to")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--database-url", default=None, help="overrides MUCODE_DATABASE_URL")
    p.add_argument("--config-json", default=None, help="JSON object of VerifierTrainingConfig overrides")
    for flag, typ in (("--learning-rate", float), ("--epochs", float), ("--max-steps", int),
                      ("--per-device-batch-size", int), ("--effective-batch-size", int), ("--max-length", int),
                      ("--pairs-per-problem", int), ("--holdout-fraction", float), ("--seed", int),
                      ("--l2-coeff", float), ("--checkpoint-steps", int)):
        p.add_argument(flag, type=typ, default=None)
    p.add_argument("--pair-sampling", choices=["per_round", "pooled"], default=None)
    p.add_argument("--tracking", choices=["none", "tensorboard", "mlflow", "wandb"], default=None,
                   help="where the loss curve goes (default: the experiment's, else MUCODE_TRACKING)")
    p.add_argument("--tracking-uri", default=None, help="TensorBoard folder, MLflow URI or W&B folder")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--no-eval", action="store_true", help="skip scoring the held-out/test candidates")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace, protocol: dict[str, Any] | None = None) -> VerifierTrainingConfig:
    overrides: dict[str, Any] = json.loads(args.config_json) if args.config_json else {}
    for key in ("loss", "learning_rate", "epochs", "max_steps", "per_device_batch_size", "effective_batch_size",
                "max_length", "pairs_per_problem", "pair_sampling", "holdout_fraction", "seed", "l2_coeff",
                "bf16", "gradient_checkpointing", "checkpoint_steps", "tracking", "tracking_uri"):
        val = getattr(args, key, None)
        if val is not None:
            overrides[key] = val
    if args.lora:
        overrides["use_lora"] = True
    if args.no_eval:
        overrides["evaluate"] = False
    return VerifierTrainingConfig.from_protocol(protocol, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.store import Store
    from trainers.verifier.config import frozen_protocol
    from trainers.verifier.data import build_training_set

    store = Store(args.database_url) if args.database_url else Store.from_settings()
    protocol = None
    round_id = args.round_id
    experiment_id = None
    if args.experiment:
        exp = store.get_experiment(args.experiment)
        protocol = frozen_protocol(exp.config)
        experiment_id = exp.id
        round_ids = store.verifier_round_ids(args.experiment, args.round_index)
        round_id = round_id if round_id is not None else round_ids[-1]
    config = config_from_args(args, protocol)
    try:
        if args.training_set:
            ts_id: int | str = int(args.training_set) if args.training_set.isdigit() else args.training_set
        else:
            if args.rounds:
                round_ids = [int(x) for x in args.rounds.split(",") if x.strip()]
            ts_id = build_training_set(store, round_ids, config, experiment_id=experiment_id, round_id=round_id)
        vid = train_verifier(
            store,
            training_set_id=ts_id,
            base_model=args.base_model,
            config=config,
            name=args.name,
            round_id=round_id,
            output_dir=args.output_dir,
            progress=not args.no_progress,
        )
    except MucodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if _is_main():
        print(json.dumps({"verifier_id": vid}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
