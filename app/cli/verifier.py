"""CLI: ``mucode verifier train|score|metrics|dataset|list``. Trainers and workers load lazily."""

from __future__ import annotations

from typing import Any

import typer

from app.cli.common import console, get_store, print_json
from app.errors import MucodeError

verifier_app = typer.Typer(
    help="The learned verifier R(x, y): training sets, BT/BCE training, scoring, metrics.", no_args_is_help=True
)


_PAIR_SAMPLING_HELP = ("per_round (default, the paper): the pairs per problem drawn from each round's rollouts, "
                       "the rounds' sets concatenated; pooled: drawn once from all rounds together")
_HOLDOUT_HELP = "share of train problems kept out of training to measure the verifier on (default 0: the paper)"


def _ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise MucodeError(f"expected comma-separated ids, got {text!r}") from exc


def _scope(store, experiment: str | None, round_index: int | None, rounds: str | None):
    """(round ids, experiment id, round id the verifier belongs to, the experiment's frozen verifier config)."""
    if experiment and rounds:
        raise MucodeError("give --experiment (with --round) or --rounds, not both")
    if experiment:
        exp = store.get_experiment(experiment)
        round_ids = store.verifier_round_ids(experiment, round_index)
        from trainers.verifier.config import frozen_protocol

        return round_ids, exp.id, round_ids[-1], frozen_protocol(exp.config), exp.base_model
    if rounds:
        round_ids = _ids(rounds)
        return round_ids, None, None, None, None
    raise MucodeError("say which data: --experiment NAME [--round N] or --rounds ID,ID")


def _config(protocol, **overrides):
    from trainers.verifier.config import VerifierTrainingConfig

    try:
        return VerifierTrainingConfig.from_protocol(protocol, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:  # e.g. --pair-sampling pooledd: one line naming the setting, no traceback
        raise MucodeError(f"invalid verifier setting: {exc}") from exc


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


@verifier_app.command("dataset")
def dataset_cmd(
    experiment: str = typer.Option(None, "--experiment", help="experiment name: its rounds are the data"),
    round_index: int = typer.Option(None, "--round", help="with --experiment: rounds 0..N (default all)"),
    rounds: str = typer.Option(None, "--rounds", help="comma-separated round ids"),
    loss: str = typer.Option(None, "--loss", help="bt (pairs, default) or bce (rows)"),
    pairs_per_problem: int = typer.Option(None, "--pairs-per-problem"),
    pair_sampling: str = typer.Option(None, "--pair-sampling", help=_PAIR_SAMPLING_HELP),
    holdout_fraction: float = typer.Option(None, "--holdout-fraction", help=_HOLDOUT_HELP),
    seed: int = typer.Option(None, "--seed"),
    name: str = typer.Option(None, "--name", help="training set name (default: hash of rounds and config)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Build (or find) the verifier training set of some rounds: train-split problems only."""
    from trainers.verifier.data import build_training_set

    store = get_store()
    round_ids, exp_id, round_id, protocol, _ = _scope(store, experiment, round_index, rounds)
    cfg = _config(protocol, loss=loss, pairs_per_problem=pairs_per_problem, pair_sampling=pair_sampling,
                  holdout_fraction=holdout_fraction, seed=seed)
    ts_id = build_training_set(store, round_ids, cfg, name=name, experiment_id=exp_id, round_id=round_id)
    ts = store.get_verifier_training_set(ts_id)
    ts["config"].pop("rows", None)
    if as_json:
        print_json(ts)
        return
    console.print(f"training set [bold]{ts['name']}[/] (id {ts['id']}, {ts['kind']}), rounds {round_ids}")
    for k, v in ts["stats"].items():
        console.print(f"  {k}: {v}")


@verifier_app.command("train")
def train_cmd(
    experiment: str = typer.Option(None, "--experiment", help="experiment name: its rounds are the data"),
    round_index: int = typer.Option(None, "--round", help="with --experiment: rounds 0..N (default all)"),
    rounds: str = typer.Option(None, "--rounds", help="comma-separated round ids"),
    training_set: str = typer.Option(None, "--training-set", help="an existing training set (id or name)"),
    base_model: str = typer.Option(None, "--base-model", help="hub name, local path or pulled model"),
    loss: str = typer.Option(None, "--loss", help="bt (default, paper) or bce"),
    lora: bool = typer.Option(None, "--lora/--full", help="LoRA instead of a full fine-tune"),
    name: str = typer.Option(None, "--name", help="verifier name (default: EXPERIMENT-rN-verifier-LOSS)"),
    learning_rate: float = typer.Option(None, "--lr"),
    epochs: float = typer.Option(None, "--epochs"),
    max_steps: int = typer.Option(None, "--max-steps", help="stop after N optimizer steps (smoke runs)"),
    per_device_batch_size: int = typer.Option(None, "--per-device-batch-size"),
    effective_batch_size: int = typer.Option(None, "--effective-batch-size"),
    max_length: int = typer.Option(None, "--max-length"),
    pairs_per_problem: int = typer.Option(None, "--pairs-per-problem"),
    pair_sampling: str = typer.Option(None, "--pair-sampling", help=_PAIR_SAMPLING_HELP),
    holdout_fraction: float = typer.Option(None, "--holdout-fraction", help=_HOLDOUT_HELP),
    seed: int = typer.Option(None, "--seed"),
    gpus: int = typer.Option(1, "--gpus", help="> 1: run under `accelerate launch` with this many processes"),
    accelerate_config: str = typer.Option(
        None, "--accelerate-config", help="e.g. trainers/verifier/accelerate_zero3.yaml (DeepSpeed ZeRO-3)"
    ),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip scoring held-out and MBPP-test candidates"),
    queue: bool = typer.Option(False, "--queue", help="queue a mucode.train_verifier job instead"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train a verifier (BT through TRL's reward trainer, or BCE), save it, register it, measure it."""
    from trainers.verifier.data import build_training_set

    store = get_store()
    exp_id = round_id = protocol = exp_base = None
    round_ids = None
    if training_set is None:
        round_ids, exp_id, round_id, protocol, exp_base = _scope(store, experiment, round_index, rounds)
    elif experiment or rounds:
        raise MucodeError("--training-set already names the data: drop --experiment/--rounds")
    base_model = base_model or exp_base
    if not base_model:
        raise MucodeError("--base-model is required (hub name, local path or pulled model)")
    from trainers.common import resolve_base_model

    resolve_base_model(base_model)  # a bad path fails here, before anything is built or loaded
    overrides = {"loss": loss, "use_lora": lora, "learning_rate": learning_rate, "epochs": epochs,
                 "max_steps": max_steps,
                     "per_device_batch_size": per_device_batch_size, "effective_batch_size": effective_batch_size,
                     "max_length": max_length, "pairs_per_problem": pairs_per_problem,
                     "pair_sampling": pair_sampling, "holdout_fraction": holdout_fraction, "seed": seed}
    if no_eval:
        overrides["evaluate"] = False
    if training_set is not None:
        ts = store.get_verifier_training_set(training_set)
        if overrides["loss"] is None:
            overrides["loss"] = ts["kind"]
    cfg = _config(protocol, **overrides)
    if training_set is None:
        ts_id: int | str = build_training_set(store, round_ids, cfg, experiment_id=exp_id, round_id=round_id)
    else:
        ts_id = ts["id"]
    if queue:
        from workers.dispatch import submit

        submit("mucode.train_verifier", base_model=base_model, training_set_id=ts_id, config=cfg.to_dict(),
               name=name, round_id=round_id, experiment_id=exp_id, num_gpus=gpus,
               accelerate_config=accelerate_config)
        console.print(f"queued mucode.train_verifier on training set {ts_id}")
        return
    if gpus > 1:
        from workers.tasks.train_verifier import launch_distributed

        vid = launch_distributed(store, training_set_id=ts_id, base_model=base_model, config=cfg, name=name,
                                 round_id=round_id, num_gpus=gpus, accelerate_config=accelerate_config)
    else:
        from trainers.verifier.train import train_verifier

        vid = train_verifier(store, training_set_id=ts_id, base_model=base_model, config=cfg, name=name,
                             round_id=round_id, progress=not as_json)
    v = store.get_verifier(vid)
    if as_json:
        print_json(v)
        return
    console.print(f"verifier [bold]{v['name']}[/] (id {v['id']}) at {v['uri']}", highlight=False, soft_wrap=True)
    if v["metrics"].get("eval"):
        _print_metrics(v)


@verifier_app.command("score")
def score_cmd(
    verifier: str = typer.Argument(..., help="verifier id or name"),
    round_id: int = typer.Option(None, "--round", help="every candidate of this round"),
    evaluation_id: int = typer.Option(None, "--evaluation", help="every candidate of this evaluation"),
    candidates: str = typer.Option(None, "--candidates", help="comma-separated candidate ids"),
    all_candidates: bool = typer.Option(False, "--all", help="every candidate in the store"),
    batch_size: int = typer.Option(None, "--batch-size", help="sequences per forward pass"),
    queue: bool = typer.Option(False, "--queue", help="queue a mucode.score job instead"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score candidates not yet scored by VERIFIER (idempotent: scoring twice writes nothing new)."""
    store = get_store()
    v = store.get_verifier(verifier)
    ids = _ids(candidates)
    if ids is None and round_id is None and evaluation_id is None and not all_candidates:
        raise MucodeError("say which candidates: --round ID, --evaluation ID, --candidates IDS or --all")
    if queue:
        from workers.dispatch import submit

        submit("mucode.score", verifier_id=v["id"], candidate_ids=ids, round_id=round_id,
               evaluation_id=evaluation_id, all_candidates=all_candidates, batch_size=batch_size)
        console.print(f"queued mucode.score for verifier {v['name']}")
        return
    from workers.tasks.score import score_candidates

    stats: dict[str, Any] = {}
    written = score_candidates(store, v["id"], ids, round_id=round_id, evaluation_id=evaluation_id,
                               all_candidates=all_candidates, batch_size=batch_size, progress=not as_json,
                               stats=stats)
    stats["written"] = written
    if as_json:
        print_json({"verifier_id": v["id"], **stats})
        return
    if not stats.get("todo"):
        console.print(f"nothing to score: every selected candidate has a score from {v['name']}")
        return
    console.print(
        f"scored {stats['todo']} candidates with {v['name']} ({written} new rows) in {stats['seconds']} s "
        f"(model {stats['model_seconds']} s, {_fmt(stats.get('candidates_per_s'))} candidates/s"
        + (f", {stats['truncated']} truncated to max_length" if stats.get("truncated") else "") + ")"
    )


def _print_metrics(v: dict[str, Any]) -> None:
    from rich.table import Table

    ev = v["metrics"].get("eval") or {}
    tr = v["metrics"].get("train") or {}
    if tr:
        unit = "pairs" if "pairs" in tr else "rows"
        console.print(
            f"training: {tr.get(unit)} {unit}, {tr.get('steps')} steps, loss {_fmt(tr.get('first_loss'))} -> "
            f"{_fmt(tr.get('final_loss'))}, {_fmt(tr.get('seconds'))} s "
            f"({_fmt(tr.get(f'seconds_per_1k_{unit}'))} s per 1k {unit})"
        )
    # one column per measured part: a verifier trained on every train problem has no held-out column
    measured = [(ev[k], title) for k, title in (("holdout", "held-out train problems"),
                                                ("mbpp_test", "MBPP test rollouts")) if ev.get(k)]
    table = Table("metric", *(title for _, title in measured), title=f"verifier {v['name']}")
    parts = [p for p, _ in measured]
    for key, label in (
        ("rows", "responses"), ("unscored", "unscored"), ("positives", "correct"), ("problems", "problems"),
        ("roc_auc", "ROC-AUC"), ("pairs", "same-problem pairs"), ("pair_accuracy", "pair accuracy"),
        ("bon_n", "BoN N"), ("bon_groups", "BoN groups (>=1 correct)"), ("bon_accuracy", "BoN selection accuracy"),
        ("bon_random_baseline", "  random pick"), ("bon_oracle_rate", "  groups with a correct one"),
        ("score_mean_correct", "mean score, correct"), ("score_mean_incorrect", "mean score, incorrect"),
        ("ece", "ECE (BCE)"), ("brier", "Brier (BCE)"),
    ):  # fmt: skip
        if any(key in p for p in parts):
            table.add_row(label, *(_fmt(p.get(key)) for p in parts))
    if parts:
        console.print(table)
    if not ev.get("holdout"):
        console.print("held-out: none (every train problem trained this verifier, as in the paper; "
                      "`--holdout-fraction` holds some out to measure it on problems it never saw)")
    if not ev.get("mbpp_test"):
        console.print("MBPP test: no executed MBPP-test evaluation rollouts in the store yet")
    for part, title in (("holdout", "held-out train problems"), ("mbpp_test", "MBPP test rollouts")):
        cal = (ev.get(part) or {}).get("calibration")
        if not cal:
            continue
        t = Table("sigmoid(score) bin", "responses", "mean predicted", "observed correct",
                  title=f"calibration ({title})")
        for row in cal:
            t.add_row(f"{row['lo']:.1f}–{row['hi']:.1f}", str(row["count"]), _fmt(row["mean_predicted"]),
                      _fmt(row["observed"]))
        console.print(t)


@verifier_app.command("metrics")
def metrics_cmd(
    verifier: str = typer.Argument(..., help="verifier id or name"),
    stored: bool = typer.Option(False, "--stored", help="print the stored metrics, compute nothing"),
    no_score: bool = typer.Option(False, "--no-score", help="use existing scores only (no model loading)"),
    evaluations: str = typer.Option(None, "--evaluations", help="restrict MBPP-test rows to these evaluation ids"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """ROC-AUC, pair accuracy, Best-of-N selection accuracy (and calibration for BCE), stored and printed."""
    store = get_store()
    v = store.get_verifier(verifier)
    if not stored:
        from trainers.verifier.evaluate import evaluate_verifier

        evaluate_verifier(store, v["id"], score_missing=not no_score, evaluation_ids=_ids(evaluations),
                          progress=not as_json)
        v = store.get_verifier(v["id"])
    if as_json:
        print_json({"id": v["id"], "name": v["name"], "metrics": v["metrics"]})
        return
    _print_metrics(v)


@verifier_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered verifiers and how many candidates each has scored."""
    from rich.table import Table

    rows = get_store().list_verifiers()
    if as_json:
        print_json(rows)
        return
    t = Table("id", "name", "loss", "base model", "round", "training set", "scores", "path")
    for r in rows:
        t.add_row(str(r["id"]), r["name"], r["loss"] or "", r["base_model"], _fmt(r["round_id"]),
                  _fmt(r["training_set_id"]), str(r["scores"]), r["uri"])
    console.print(t)


def register(root: typer.Typer) -> None:
    root.add_typer(verifier_app, name="verifier")

