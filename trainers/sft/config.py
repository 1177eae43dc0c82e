"""Arguments of a generator SFT run (a TRL-style dataclass; ``HfArgumentParser`` reads it from the command line).

Defaults are the paper's (docs/method.md §5): lr 5e-7, linear decay, no warmup, AdamW, weight decay 0,
2 epochs, effective batch 16 (per-device batch x gradient accumulation x processes), full fine-tune, max
length 8192, no packing, from the base model each round. ``to_sft_config`` turns it into ``trl.SFTConfig``.

``checkpoint_steps`` (default 200; 0 turns it off): every that many optimizer steps the run writes a
checkpoint (weights, optimizer, scheduler, RNG states) to ``<output_dir>.checkpoints/`` and keeps the last two;
a run with the same output that was killed (a redelivered job, ``mucode round resume``, the same command again)
continues from the last complete one, with the data order and step count of an uninterrupted run. The folder is
deleted once the model is saved and registered. Runs shorter than ``checkpoint_steps`` never write one
(``trainers/checkpoints.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@dataclass
class GeneratorTrainConfig:
    # What to train on and from.
    training_set: str | None = field(default=None, metadata={"help": "SFT training set id or name."})
    base_model: str | None = field(
        default=None, metadata={"help": "Base model (hub name, local path or pulled name); default: the experiment's."}
    )
    init: str = field(
        default="base",
        metadata={
            "help": "'base': start from the base model every round (paper); 'parent': warm-start from the "
            "generator that collected the round.",
            "choices": ["base", "parent"],
        },
    )
    init_model: str | None = field(default=None, metadata={"help": "Start from this model (overrides --init)."})
    name: str | None = field(default=None, metadata={"help": "Model version name (default: from the set's name)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the model is saved (default: <artifacts_dir>/models/<name>)."}
    )
    database_url: str | None = field(default=None, metadata={"help": "Store URL (default: MUCODE_DATABASE_URL)."})
    register: bool = field(default=True, metadata={"help": "Register the result as a generator model version."})
    set_round_output: bool = field(
        default=False, metadata={"help": "Also record it as its round's generator_out_id."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Retrain even if the named version exists."})

    # Optimisation (paper defaults).
    learning_rate: float = field(default=5e-7)
    num_train_epochs: float = field(default=2.0)
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: epochs)."})
    effective_batch_size: int = field(default=16, metadata={"help": "per-device batch x accumulation x processes"})
    per_device_train_batch_size: int = field(default=1)
    lr_scheduler_type: str = field(default="linear")
    warmup_steps: float = field(default=0.0, metadata={"help": "Steps, or a fraction (< 1) of all steps."})
    weight_decay: float = field(default=0.0)
    max_grad_norm: float = field(default=1.0)
    optim: str | None = field(
        default=None,
        metadata={"help": "The optimizer by transformers' name (default: its AdamW, as the paper); adafactor keeps "
                  "no second moment per weight (the CPU demo uses it to fit a laptop's memory)."},
    )
    max_length: int = field(
        default=8192, metadata={"help": "Examples longer than this are left out (counted), never truncated."}
    )
    seed: int = field(default=0)
    bf16: str = field(default="auto", metadata={"help": "'auto' (on when a GPU supports it), 'true' or 'false'."})
    gradient_checkpointing: bool = field(default=True)
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. flash_attention_2, sdpa."})
    logging_steps: int = field(default=1)
    checkpoint_steps: int = field(
        default=200,
        metadata={"help": "Write a resumable checkpoint every this many optimizer steps (0: never); a killed "
                  "run with the same output continues from the last complete one."},
    )
    dataloader_num_workers: int = field(default=0)
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Tokenizing processes (default: up to 8 for sets of 5000+ examples)."}
    )
    deepspeed: str | None = field(default=None, metadata={"help": "A DeepSpeed config file (e.g. ZeRO-3)."})
    tracking: str | None = field(
        default=None,
        metadata={"help": "Where the training curves go: none, tensorboard, mlflow or wandb (default: the "
                  "experiment's tracking, else MUCODE_TRACKING)."},
    )
    tracking_uri: str | None = field(
        default=None, metadata={"help": "TensorBoard folder, MLflow tracking URI or W&B folder (default: "
                                "the experiment's, else MUCODE_TRACKING_URI, else under the artifacts folder)."},
    )

    # LoRA (off by default: the paper fine-tunes all weights).
    use_lora: bool = field(default=False)
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: str = field(default="all-linear")
    merge_lora: bool = field(
        default=True, metadata={"help": "Save the merged full model (loadable by every backend), not the adapter."}
    )

    @classmethod
    def from_protocol(cls, generator_config: Any, **overrides: Any) -> GeneratorTrainConfig:
        """From ``app.protocol.GeneratorConfig`` (an experiment's frozen settings)."""
        g = generator_config
        values = {
            "learning_rate": g.learning_rate,
            "num_train_epochs": g.epochs,
            "effective_batch_size": g.effective_batch_size,
            "per_device_train_batch_size": g.per_device_batch_size,
            "max_length": g.max_length,
            "use_lora": g.use_lora,
            "init": "base" if g.from_base_each_round else "parent",
            "seed": g.seed,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def gradient_accumulation_steps(self, world_size: int) -> int:
        per_step = max(1, self.per_device_train_batch_size * max(1, world_size))
        return max(1, math.ceil(self.effective_batch_size / per_step))

    def use_bf16(self) -> bool:
        if str(self.bf16).lower() in ("true", "1", "yes"):
            return True
        if str(self.bf16).lower() in ("false", "0", "no"):
            return False
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())

    def to_sft_config(self, output_dir: str, *, world_size: int = 1, run_name: str | None = None):
        """The ``trl.SFTConfig`` of this run (the dataset arrives tokenized, with its labels). ``tracking`` is
        handed to TRL's integrations as ``report_to``, with ``run_name``."""
        import dataclasses

        from trl import SFTConfig

        from app.tracking import BACKENDS
        from app.tracking import trainer_args as tracking_args

        if self.tracking is not None and self.tracking not in BACKENDS:
            raise ValueError(f"tracking must be one of {', '.join(BACKENDS)}, not {self.tracking!r}")
        from trainers.checkpoints import training_args as checkpoint_args

        names = {f.name for f in dataclasses.fields(SFTConfig)}
        if "activation_checkpointing" in names:  # transformers >= 5.x renamed gradient_checkpointing
            ckpt = {"activation_checkpointing": self.gradient_checkpointing, "gradient_checkpointing": None}
        else:
            ckpt = {"gradient_checkpointing": self.gradient_checkpointing}
        return SFTConfig(
            **ckpt,
            output_dir=output_dir,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps(world_size),
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            **({"optim": self.optim} if self.optim else {}),
            seed=self.seed,
            data_seed=self.seed,
            bf16=self.use_bf16(),
            use_cpu=not _cuda(),  # also what makes a CPU multi-process launch use gloo
            fp16=False,
            logging_steps=self.logging_steps,
            logging_first_step=True,
            **checkpoint_args(self.checkpoint_steps),
            eval_strategy="no",
            **tracking_args(self.tracking, run_name),
            dataloader_num_workers=self.dataloader_num_workers,
            deepspeed=self.deepspeed,
            # Tokenized by us (exact masks); TRL's own masking paths stay off.
            max_length=None,
            packing=False,
            completion_only_loss=False,
            assistant_only_loss=False,
            remove_unused_columns=False,
            disable_tqdm=True,
        )
