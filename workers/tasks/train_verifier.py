"""Celery task ``mucode.train_verifier`` (queue ``train``): build the training set if needed, train, register.

Idempotent: the training set is found by name and a verifier whose name is registered with a complete model
folder is not trained again, so a redelivered job only queues its ``then``; a job whose worker died
mid-training continues from the run's last complete checkpoint (``trainers/checkpoints.py``), not from step 0.
With ``num_gpus > 1`` the training runs under ``accelerate launch`` (one process per GPU;
``accelerate_config`` e.g. the ZeRO-3 file beside the trainer) and this task waits for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from app.errors import MucodeError
from workers.celery_app import celery_app
from workers.healing import ride_out_outages
from workers.stores import worker_store
from workers.tasks.score import follow

if TYPE_CHECKING:
    from app.store import Store


def run_train_verifier(
    store: Store,
    *,
    base_model: str,
    training_set_id: int | str | None = None,
    round_ids: list[int] | None = None,
    config: dict[str, Any] | None = None,
    protocol: dict[str, Any] | None = None,
    name: str | None = None,
    round_id: int | None = None,
    experiment_id: int | None = None,
    num_gpus: int = 1,
    accelerate_config: str | None = None,
    progress: bool = False,
) -> int:
    """The task body, callable in-process. ``protocol``: an experiment's frozen VerifierConfig dict;
    ``config``: VerifierTrainingConfig overrides. Returns the verifier's model version id."""
    from trainers.verifier.config import VerifierTrainingConfig
    from trainers.verifier.data import build_training_set

    cfg = VerifierTrainingConfig.from_protocol(protocol, **(config or {}))
    if training_set_id is None:
        if not round_ids:
            raise MucodeError("train_verifier needs training_set_id or round_ids")
        training_set_id = build_training_set(store, round_ids, cfg, experiment_id=experiment_id, round_id=round_id)
    if num_gpus <= 1:
        from trainers.verifier.train import train_verifier

        return train_verifier(
            store, training_set_id=training_set_id, base_model=base_model, config=cfg, name=name,
            round_id=round_id, progress=progress,
        )
    return launch_distributed(
        store, training_set_id=training_set_id, base_model=base_model, config=cfg, name=name,
        round_id=round_id, num_gpus=num_gpus, accelerate_config=accelerate_config,
    )


def launch_distributed(
    store: Store,
    *,
    training_set_id: int | str,
    base_model: str,
    config,
    name: str | None,
    round_id: int | None,
    num_gpus: int,
    accelerate_config: str | None = None,
) -> int:
    """Run ``accelerate launch -m trainers.verifier.train`` and return the registered verifier's id."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_gpus)]
    if accelerate_config:
        cmd += ["--config_file", accelerate_config]
    else:
        cmd += ["--multi_gpu"]
    cmd += [
        "-m", "trainers.verifier.train",
        "--training-set", str(training_set_id),
        "--base-model", base_model,
        "--config-json", json.dumps(config.to_dict()),
        "--database-url", store.engine.url.render_as_string(hide_password=False),
    ]
    if name:
        cmd += ["--name", name]
    if round_id is not None:
        cmd += ["--round-id", str(round_id)]
    proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not last:
        raise MucodeError(f"accelerate launch failed (exit {proc.returncode}): {' '.join(cmd[:8])} ...")
    return int(json.loads(last[-1])["verifier_id"])


@celery_app.task(name="mucode.train_verifier")
@ride_out_outages
def train_verifier(base_model: str, then: dict[str, Any] | list[dict[str, Any]] | None = None,
                   **options: Any) -> dict[str, Any]:
    """``run_train_verifier`` on this worker's store (``options``: its keyword arguments), then ``then``."""
    vid = run_train_verifier(worker_store(), base_model=base_model, **options)
    follow(then, verifier_id=vid)
    return {"verifier_id": vid}
