"""What both trainers (verifier, generator SFT) need the same way: the run's process count, where the base
model comes from, and how a trained model folder is written so that a crash never leaves one that looks
finished.

Kept free of torch and transformers at import time: the CLI resolves a base model before anything is loaded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import ConfigError


def world_size() -> int:
    """Processes of this run, from the launcher's environment (torchrun / accelerate launch set WORLD_SIZE).

    Read before any trainer exists: creating accelerate's shared state here would fix its device choice
    (a CPU multi-process run needs ``use_cpu`` from the training arguments).
    """
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def resolve_base_model(arg: str | os.PathLike) -> str:
    """Where to load a base model from: an existing model folder, a pulled model, or a hub name.

    The model registry decides (``app.model_registry.resolve_model``): a path that does not exist, a folder
    that holds no model or a pullable model that is not pulled yet fails here with what to do, before
    anything is loaded.
    """
    from app.model_registry import resolve_model

    if not str(arg).strip():
        raise ConfigError("no base model given")
    return resolve_model(arg)


def save_atomically(
    out_dir: str | os.PathLike,
    *,
    write_all: Callable[[Path], Any] | None = None,
    write_main: Callable[[Path], Any] | None = None,
    accelerator: Any = None,
) -> Path:
    """Write a model folder whole into ``<out_dir>.partial``, then rename it to ``out_dir`` (replacing an
    older one): a run killed while saving leaves only the ``.partial`` folder, which the next save clears.

    ``write_all(tmp)`` runs on every process (a sharded model is gathered by all of them), then
    ``write_main(tmp)`` on the main process only. Without ``accelerator`` this process is the only one.
    """
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    main = accelerator is None or accelerator.is_main_process
    wait = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    wait()
    if write_all is not None:
        write_all(tmp)
    wait()
    if main:
        if write_main is not None:
            write_main(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return out
