"""CLI: ``mucode relabel``, ``mucode generator train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console, get_store, print_json

generator_app = typer.Typer(help="Generator fine-tuning on relabeled SFT sets.", no_args_is_help=True)


def relabel(
    round_ref: str = typer.Argument(
        ..., metavar="ROUND-or-EXPERIMENT", help="Round id, EXPERIMENT/INDEX, or EXPERIMENT (its latest round)."
    ),
    method: str = typer.Option(
        None, "--method", help="mucode | multi_rft | rft | rft_lv (default: the experiment's method)."
    ),
    expert: str = typer.Option(None, "--expert", help="mucode expert: both (LV + 100*label) | oracle | learned."),
    k: int = typer.Option(None, "--k", help="Failed trajectories relabeled per problem (default 3)."),
    top_k: int = typer.Option(None, "--top-k", help="rft_lv: trajectories kept per problem (default 3)."),
    keep_successful: bool = typer.Option(
        None, "--keep-successful/--no-keep-successful", help="Keep every successful trajectory (default on)."
    ),
    aggregate: bool = typer.Option(
        None, "--aggregate/--no-aggregate", help="Union of all rounds up to this one (default on, paper)."
    ),
    verifier: int = typer.Option(None, "--verifier", help="Verifier id for this round (default: its verifier_out)."),
    name: str = typer.Option(None, "--name", help="Training set name (default: derived from round and settings)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild an existing set with the same name."),
    export: Annotated[
        Path | None, typer.Option("--export", help="Also write the examples as JSONL to this file.")
    ] = None,
    hf_dataset: Annotated[
        Path | None, typer.Option("--hf-dataset", help="Also save a Hugging Face dataset to this folder.")
    ] = None,
    as_json: bool = typer.Option(False, "--json", help="Print the training set as JSON."),
) -> None:
    """Build the relabeled SFT training set of a round (µCode expert or a baseline) from the store."""
    from trainers.relabel import build_training_set, export_jsonl, to_hf_dataset

    store = get_store()
    ts = build_training_set(
        store, round_ref, method=method, expert=expert, relabel_failed=k, keep_successful=keep_successful,
        aggregate_rounds=aggregate, top_k=top_k, verifier_id=verifier, name=name, rebuild=rebuild,
    )
    out = dict(ts)
    if export is not None:
        out["exported_jsonl"] = {"path": str(export), "examples": export_jsonl(store, ts["id"], export)}
    if hf_dataset is not None:
        if as_json:  # keep the terminal clean for a script reading the JSON
            from datasets.utils.logging import disable_progress_bar

            disable_progress_bar()
        ds = to_hf_dataset(store, ts["id"])
        ds.save_to_disk(str(hf_dataset))
        out["exported_hf_dataset"] = {"path": str(hf_dataset), "examples": len(ds)}
    if as_json:
        print_json(out)
        return
    st = ts["stats"]
    verb = "built" if ts["created"] else "exists"
    console.print(f"training set [bold]{ts['name']}[/] (id {ts['id']}) {verb}: {st.get('examples', 0)} examples")
    console.print(f"  by source: {st.get('examples_by_source', {})}")
    console.print(
        f"  problems: {st.get('problems_with_examples', 0)} with examples; trajectories kept "
        f"{st.get('trajectories_kept', 0)} of {st.get('trajectories', 0)}"
    )
    if st.get("problems_without_correct"):
        console.print(
            f"  [yellow]{st['problems_without_correct']} problem(s) had no correct response: relabeled to the "
            "verifier's best (incorrect) response[/]"
        )
    excluded = st.get("excluded_non_train_rollouts", 0)
    if excluded:
        console.print(f"  {excluded} rollout(s) of non-train problems left out")
    for key in ("exported_jsonl", "exported_hf_dataset"):
        if key in out:
            console.print(f"  wrote {out[key]['examples']} examples to {out[key]['path']}")


@generator_app.command("train")
def generator_train(
    training_set: str = typer.Option(..., "--training-set", help="SFT training set id or name."),
    base_model: str = typer.Option(None, "--base-model", help="Default: the experiment's base model."),
    lora: bool = typer.Option(False, "--lora", help="LoRA instead of a full fine-tune (merged when saved)."),
    init: str = typer.Option("base", "--init", help="base (paper) | parent (warm-start from the round's generator)."),
    name: str = typer.Option(None, "--name", help="Model version name."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 5e-7)."),
    epochs: float = typer.Option(None, "--epochs", help="Epochs (default 2)."),
    batch: int = typer.Option(None, "--effective-batch-size", help="Effective batch (default 16)."),
    per_device: int = typer.Option(None, "--per-device-batch-size", help="Per-device batch (default 1)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    max_length: int = typer.Option(None, "--max-length", help="Longest example in tokens (default 8192)."),
    num_processes: int = typer.Option(
        1, "--num-processes", help="Processes (GPUs); above 1 the run goes through `accelerate launch`."
    ),
    set_round_output: bool = typer.Option(False, "--set-round-output", help="Record it as the round's output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain even if the version exists."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fine-tune a generator on a training set (TRL SFTTrainer) and register it as a model version."""
    from trainers.sft.config import GeneratorTrainConfig

    cfg = GeneratorTrainConfig(
        training_set=training_set, base_model=base_model, use_lora=lora, init=init, name=name,
        set_round_output=set_round_output, overwrite=overwrite,
    )
    for attr, value in (
        ("learning_rate", lr), ("num_train_epochs", epochs), ("effective_batch_size", batch),
        ("per_device_train_batch_size", per_device), ("max_steps", max_steps), ("max_length", max_length),
    ):
        if value is not None:
            setattr(cfg, attr, value)
    import contextlib
    import sys

    # With --json, stdout carries the JSON alone: the trainer's progress logs go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        if num_processes > 1:
            from workers.tasks.train_generator import launch_distributed

            mv = launch_distributed(cfg, num_processes=num_processes, store=get_store())
        else:
            from trainers.sft.trainer import train_generator

            mv = train_generator(cfg, store=get_store())
    if as_json:
        print_json(mv)
        return
    m = mv.get("metrics", {})
    console.print(
        f"generator [bold]{mv['name']}[/] (id {mv.get('id')}) at {mv['uri']}: loss "
        f"{m.get('train_loss_first')} -> {m.get('train_loss_last')} in {m.get('global_steps')} steps"
    )


def register(root: typer.Typer) -> None:
    root.command("relabel")(relabel)
    root.add_typer(generator_app, name="generator")
