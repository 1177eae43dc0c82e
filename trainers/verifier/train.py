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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import MucodeError
from trainers.common import resolve_base_model, world_size
from trainers.verifier.config import VerifierTrainingConfig

if TYPE_CHECKING:
    from app.store import Store


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _console():
    from rich.console import Console

    return Console(stderr=True, quiet=not _is_main())


def default_verifier_name(store: Store, ts: dict[str, Any], loss: str, round_id: int | None) -> str:
    rid = round_id if round_id is not None else ts.get("round_id")
    if rid is not None:
        info = store.verifier_round_info(rid)
        return f"{info['experiment']}-r{info['index']}-verifier-{loss}"
    return f"verifier-{loss}-ts{ts['id']}"


def _checked_config(store: Store, ts: dict[str, Any],
                    config: VerifierTrainingConfig | None) -> VerifierTrainingConfig:
    """A copy of ``config`` with the data fields the set was built with; refuses a set of the wrong loss or
    one that holds candidates of non-training problems."""
    config = dataclasses.replace(config) if config is not None else VerifierTrainingConfig()
    if ts["kind"] != config.loss:
        raise MucodeError(
            f"training set {ts['name']!r} holds {ts['kind']} data, but the loss is {config.loss}"
        )
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
    return config


def _tokenized(store: Store, tokenizer, ts: dict[str, Any], config: VerifierTrainingConfig):
    """(rows, dropped): the set's pairs (BT) or rows (BCE) tokenized, and how many were over max_length."""
    from trainers.verifier import data as D

    if config.loss == "bt":
        rows, dropped = D.tokenize_bt(tokenizer, D.load_bt_examples(store, ts["id"]), config.max_length)
    else:
        rows, dropped = D.tokenize_bce(tokenizer, D.load_bce_examples(store, ts["id"]), config.max_length)
    if not rows:
        raise MucodeError(f"every example of {ts['name']!r} is longer than max_length={config.max_length}")
    return rows, dropped


def train_verifier(
    store: Store,
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
    from app.tracking import environment as tracking_environment
    from trainers.checkpoints import checkpoints_dir
    from trainers.checkpoints import remove as remove_checkpoints
    from trainers.verifier.model import is_complete, load_model_for_training, load_tokenizer

    console = _console()
    ts = store.get_verifier_training_set(training_set_id)
    config = _checked_config(store, ts, config)
    name = name or default_verifier_name(store, ts, config.loss, round_id)
    existing = store.get_verifier(name, required=False)
    if existing is not None and is_complete(existing["uri"]):
        console.print(f"verifier [bold]{name}[/] is already trained ({existing['uri']}): nothing to do")
        return existing["id"]
    model_path = resolve_base_model(base_model)
    # a missing tracker package fails here, not after loading the model
    tracker, tags = _tracking(store, config, ts, round_id, name)
    out_dir = (Path(output_dir) if output_dir else get_settings().artifacts_dir / "models" / name).resolve()

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(model_path)
    rows, dropped = _tokenized(store, tokenizer, ts, config)
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
    with tracking_environment(tracker, config.run_name or name, tags):
        trainer, summary = run(model, tokenizer, rows, config, str(ckpt_dir), dropped=dropped, progress=progress,
                               run=identity)
    summary["prepare_seconds"] = round(time.perf_counter() - t0 - summary["seconds"], 3)

    meta = {
        "name": name, "loss": config.loss, "base_model": base_model, "base_model_path": model_path,
        "training_set_id": ts["id"], "training_set": ts["name"], "config": config.to_dict(),
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
        _evaluate(store, vid, scorer_model, tokenizer, config, progress=progress, console=console)
    return vid


def _evaluate(store: Store, vid: int, scorer_model, tokenizer, config: VerifierTrainingConfig, *,
              progress: bool, console) -> None:
    """Score the held-out and MBPP-test candidates with the new verifier (the model still in memory when
    there is one) and print its metrics."""
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


# Settings that change nothing the optimizer sees: checkpoints written under other values stay resumable.
_NOT_IN_RUN = {"checkpoint_steps", "logging_steps", "score_batch_size", "bon_n", "calibration_bins",
               "evaluate", "extra", "tracking", "tracking_uri", "run_name"}


def _tracking(store: Store, config: VerifierTrainingConfig, ts: dict[str, Any], round_id: int | None,
              name: str):
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
    import torch

    from trainers.common import save_atomically
    from trainers.verifier.common import use_bf16
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

    def finish(tmp: Path) -> None:
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, meta)

    # several processes (DDP or DeepSpeed ZeRO-3): save_model gathers the shards; every rank must call it
    save_atomically(out_dir, write_all=lambda tmp: trainer.save_model(str(tmp)), write_main=finish,
                    accelerator=trainer.accelerator)
    trainer.accelerator.wait_for_everyone()
    return None


# ---------------------------------------------------------------------------------------------- command line
@dataclass
class VerifierTrainArgs:
    """What a command-line run trains on and where it goes; the training settings are the fields of
    ``VerifierTrainingConfig``, read from the same command line."""

    base_model: str = field(metadata={"help": "hub name, local path or pulled model name"})
    training_set: str | None = field(
        default=None, metadata={"help": "id or name of a stored verifier training set"}
    )
    rounds: str | None = field(
        default=None, metadata={"help": "comma-separated round ids: build (or reuse) their training set"}
    )
    experiment: str | None = field(
        default=None, metadata={"help": "experiment name: its rounds (up to --round-index) are the data"}
    )
    round_index: int | None = field(default=None, metadata={"help": "with --experiment: rounds 0..N"})
    name: str | None = field(default=None, metadata={"help": "verifier name (default: from round or set)"})
    round_id: int | None = field(default=None, metadata={"help": "the round this verifier belongs to"})
    output_dir: str | None = field(default=None)
    database_url: str | None = field(default=None, metadata={"help": "overrides MUCODE_DATABASE_URL"})
    config_json: str | None = field(
        default=None, metadata={"help": "JSON object of VerifierTrainingConfig overrides (flags win)"}
    )
    no_progress: bool = field(default=False)


_SOURCES = ("training_set", "rounds", "experiment")


def build_parser():
    """The command line: ``VerifierTrainArgs`` and every ``VerifierTrainingConfig`` field (``--max-steps`` or
    ``--max_steps``), plus the short forms callers already pass (``--lora``, ``--no-eval``, ``--no-bf16``)."""
    from transformers import HfArgumentParser

    p = HfArgumentParser((VerifierTrainArgs, VerifierTrainingConfig),
                         prog="python -m trainers.verifier.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="skip scoring the held-out/test candidates")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    # A training setting left off stays None, so that an experiment's frozen protocol decides it.
    p.set_defaults(**{f.name: None for f in dataclasses.fields(VerifierTrainingConfig)})
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = [f"--{k.replace('_', '-')}" for k in _SOURCES if getattr(args, k)]
    if len(given) != 1:
        parser.error("give one of --training-set, --rounds, --experiment"
                     + (f" (not {' and '.join(given)})" if given else ""))
    try:
        config_from_args(args)
    except (ValueError, TypeError) as exc:  # a bad value: a usage error that names it, not a traceback
        parser.error(str(exc))
    return args


def config_from_args(args: argparse.Namespace,
                     protocol: dict[str, Any] | None = None) -> VerifierTrainingConfig:
    """The run's settings: the protocol (an experiment's), then ``--config-json``, then the flags given."""
    overrides: dict[str, Any] = json.loads(args.config_json) if args.config_json else {}
    for f in dataclasses.fields(VerifierTrainingConfig):
        if getattr(args, f.name, None) is not None:
            overrides[f.name] = getattr(args, f.name)
    return VerifierTrainingConfig.from_protocol(protocol, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
