"""Celery task "mucode.train_generator" (queue ``train``): relabel (if asked) and fine-tune a generator.

Idempotent: the relabel build returns the existing set for the same round and settings, and training returns
the registered version of the same name without training again, so a redelivered job changes nothing; one
whose worker died mid-training continues from the run's last complete checkpoint
(``trainers/checkpoints.py``).
With ``num_processes > 1`` the training runs under ``accelerate launch`` in a child process group.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from workers.celery_app import celery_app
from workers.healing import ride_out_outages

if TYPE_CHECKING:
    from app.store import Store

log = logging.getLogger(__name__)


def config_argv(cfg) -> list[str]:
    """Command-line arguments of ``trainers.sft.train`` that reproduce ``cfg`` (non-default fields only)."""
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if value == default or value is None:
            continue
        argv += [f"--{f.name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def launch_distributed(
    cfg, *, num_processes: int, accelerate_config: str | None = None, store: Store | None = None
) -> dict[str, Any]:
    """Run ``accelerate launch -m trainers.sft.train`` with ``num_processes`` and return the registered version."""
    from app.errors import MucodeError
    from app.store import Store
    from trainers.sft.trainer import model_name_for

    store = store or (Store(cfg.database_url) if cfg.database_url else Store.from_settings())
    ts = store.sft_training_set(cfg.training_set)
    name = cfg.name or model_name_for(ts["name"])
    # The children reach the same database through the environment (no password on a command line).
    env = dict(os.environ)
    env["MUCODE_DATABASE_URL"] = cfg.database_url or store.engine.url.render_as_string(hide_password=False)
    cfg = dataclasses.replace(cfg, name=name, database_url=None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if accelerate_config:  # DeepSpeed / FSDP / multi-node settings live there
        cmd += ["--config_file", accelerate_config]
    else:  # one machine, one process per GPU (on a CPU-only host: gloo, for tests)
        cmd += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]  # precision: --bf16
    cmd += ["-m", "trainers.sft.train", *config_argv(cfg)]
    log.info("launching: %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise MucodeError(f"generator training failed (exit code {proc.returncode}): {' '.join(cmd)}")
    mv = store.get_model_version(name, required=False)
    if mv is None:
        raise MucodeError(f"generator training finished but no model version {name!r} was registered")
    from trainers.sft.trainer import version_dict

    return version_dict(mv)


def run_train_generator(
    *,
    training_set: int | str | None = None,
    round_ref: int | str | None = None,
    method: str | None = None,
    num_processes: int = 1,
    accelerate_config: str | None = None,
    set_round_output: bool = True,
    config: dict[str, Any] | None = None,
    store: Store | None = None,
) -> dict[str, Any]:
    """The task's body, callable in-process. Give ``training_set``, or ``round_ref`` to relabel first.

    ``config`` overrides fields of ``GeneratorTrainConfig``; unset ones come from the experiment's frozen
    ``generator`` settings, then the paper defaults.
    """
    from pydantic import ValidationError

    from app.errors import ConfigError, MucodeError
    from app.protocol import GeneratorConfig
    from app.store import Store
    from trainers.sft.config import GeneratorTrainConfig
    from trainers.sft.trainer import train_generator

    store = store or Store.from_settings()
    if training_set is None:
        if round_ref is None:
            raise MucodeError("train_generator needs a training_set or a round")
        from trainers.relabel import build_training_set

        training_set = build_training_set(store, round_ref, method=method)["id"]
    ts = store.sft_training_set(training_set)
    exp = ts.get("experiment") or {}
    try:
        gen = GeneratorConfig(**((exp.get("config") or {}).get("generator") or {}))
    except ValidationError as exc:  # training with the defaults instead would be a silent protocol change
        why = "; ".join(f"generator.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"experiment {exp.get('name')!r}: its generator settings are not valid: {why}") from exc
    cfg = GeneratorTrainConfig.from_protocol(gen, **(config or {}))
    cfg.training_set = str(ts["id"])
    cfg.set_round_output = set_round_output
    if num_processes > 1:
        mv = launch_distributed(cfg, num_processes=num_processes, accelerate_config=accelerate_config, store=store)
    else:
        mv = train_generator(cfg, store=store)
        if set_round_output and ts["round_id"] is not None and mv.get("id") is not None:
            store.sft_set_round_generator(ts["round_id"], mv["id"])  # also for an already-registered version
    return {"model_version_id": mv.get("id"), "name": mv["name"], "uri": mv["uri"], "training_set_id": ts["id"]}


@celery_app.task(name="mucode.train_generator", acks_late=True)
@ride_out_outages
def train_generator(**options: Any) -> dict[str, Any]:
    """``run_train_generator`` on this worker's store (``options``: its keyword arguments)."""
    from workers.stores import worker_store

    return run_train_generator(store=worker_store(), **options)
