"""What the BT and BCE trainers share: TrainingArguments values, the precision rule, training a built trainer
(resumable) and its run summary."""

from __future__ import annotations

import time
from typing import Any

from trainers.common import world_size
from trainers.verifier.config import VerifierTrainingConfig


def use_bf16(config: VerifierTrainingConfig) -> bool:
    if config.bf16 is not None:
        return config.bf16
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def use_gradient_checkpointing(config: VerifierTrainingConfig) -> bool:
    if config.gradient_checkpointing is not None:
        return config.gradient_checkpointing
    import torch

    return bool(torch.cuda.is_available())


def training_args_kwargs(config: VerifierTrainingConfig, output_dir: str, *, progress: bool) -> dict[str, Any]:
    """TrainingArguments values common to both losses (paper defaults come from ``config``)."""
    import torch

    from app.tracking import trainer_args as tracking_args
    from trainers.checkpoints import training_args as checkpoint_args

    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps(world_size()),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "lr_scheduler_type": config.lr_scheduler_type,
        "warmup_steps": config.warmup_ratio,
        "adam_epsilon": config.adam_epsilon,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        **({"optim": config.optim} if config.optim else {}),
        "bf16": use_bf16(config),
        "fp16": False,
        "gradient_checkpointing": use_gradient_checkpointing(config),
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        **checkpoint_args(config.checkpoint_steps),
        # train.py resolved the tracker into config and set the environment its integration reads
        **tracking_args(config.tracking, config.run_name),
        "seed": config.seed,
        "data_seed": config.seed,
        "disable_tqdm": not progress,
        "dataloader_num_workers": 0,
        "use_cpu": not torch.cuda.is_available(),
        "remove_unused_columns": False,
    }


def summarize(
    trainer, *, started: float, examples: int, dropped: int, unit: str, started_cpu: float | None = None,
    resumed_from_step: int = 0,
) -> dict[str, Any]:
    """Loss curve and timing from a finished Trainer, JSON-ready for ModelVersion.metrics["train"]."""
    hist = [h for h in trainer.state.log_history if "loss" in h]
    curve = [{"step": h.get("step"), "loss": h["loss"], **({"accuracy": h["accuracy"]} if "accuracy" in h else {})}
             for h in hist]
    seconds = time.perf_counter() - started
    cpu = time.process_time() - started_cpu if started_cpu is not None else None
    epochs = trainer.state.epoch or 0.0
    steps = trainer.state.global_step or 0
    passes = examples * epochs * ((steps - resumed_from_step) / steps if steps else 1.0)  # this run's part
    return {
        unit: examples,
        f"dropped_{unit}_over_max_length": dropped,
        "steps": trainer.state.global_step,
        # > 0: a killed run continued from its checkpoint; seconds and cpu_seconds cover only this part
        "resumed_from_step": resumed_from_step,
        "epochs": epochs,
        "first_loss": curve[0]["loss"] if curve else None,
        "final_loss": curve[-1]["loss"] if curve else None,
        "loss_curve": curve,
        "seconds": round(seconds, 3),
        f"seconds_per_1k_{unit}": round(1000 * seconds / passes, 3) if passes else None,
        # CPU time of this process (all threads): on a shared machine, wall time alone overstates the cost
        "cpu_seconds": round(cpu, 3) if cpu is not None else None,
        "world_size": world_size(),
    }


def train_resumable(trainer, config: VerifierTrainingConfig, run: dict[str, Any] | None) -> int:
    """``trainer.train()``, from the last complete checkpoint in its output folder when there is one (see
    ``trainers/checkpoints.py``); ``run`` identifies the run the checkpoints must belong to. Returns the step
    it resumed from (0: from the start)."""
    from trainers import checkpoints

    trainer.add_callback(checkpoints.callback())
    resume = None
    if config.checkpoint_steps > 0:
        resume = checkpoints.prepare_resume(trainer.accelerator, trainer.args.output_dir, run or {})
    trainer.train(resume_from_checkpoint=resume)
    return checkpoints.checkpoint_step(resume)


def fit(trainer, config: VerifierTrainingConfig, *, examples: int, dropped: int, unit: str, progress: bool,
        run: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """Train a built BT or BCE trainer (from its last complete checkpoint of the same ``run``, when there
    is one) and return (trainer, summary); ``unit`` names what ``examples`` counts (pairs or rows)."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    started, started_cpu = time.perf_counter(), time.process_time()
    resumed = train_resumable(trainer, config, run)
    return trainer, summarize(trainer, started=started, examples=examples, dropped=dropped, unit=unit,
                              started_cpu=started_cpu, resumed_from_step=resumed)
