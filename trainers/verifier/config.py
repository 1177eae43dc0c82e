"""Verifier training configuration: one dataclass beside the trainers, defaults from the protocol.

The protocol (``app.protocol.VerifierConfig``) holds what an experiment freezes (loss, pairs per problem, L2
coefficient, learning rate, epochs, effective batch, max length, LoRA, seed). This dataclass adds the knobs a
trainer needs that are not part of the paper's protocol (hold-out share, precision, LoRA shape, scoring batch,
checkpoints), and test overrides (``max_steps``).

``checkpoint_steps`` (default 200; 0 turns it off): every that many optimizer steps training writes a
checkpoint (weights, optimizer, scheduler, RNG states) to ``<model folder>.checkpoints/`` and keeps the last
two; a run of the same verifier that was killed (a redelivered job, ``mucode round resume``, the same command
again) continues from the last complete one, with the data order and step count of an uninterrupted run. The
folder is deleted once the verifier is saved and registered. Runs shorter than ``checkpoint_steps`` never write one
(``trainers/checkpoints.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from app.protocol import VerifierConfig

_P = VerifierConfig()
# How HfArgumentParser reads an optional boolean (train.py's command line): ``--bf16`` alone is true
_FLAG = {"nargs": "?", "const": True}


def frozen_protocol(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The verifier section of an experiment's stored config, read as ``ExperimentConfig.frozen`` reads it: a
    setting added since the experiment was created takes its legacy value. None when there is no section."""
    from app.protocol import LEGACY_DEFAULTS

    part = (stored or {}).get("verifier")
    if not isinstance(part, dict):
        return None
    return {**LEGACY_DEFAULTS.get("verifier", {}), **part}


@dataclass
class VerifierTrainingConfig:
    # -- protocol (paper defaults, docs/method.md §4) --------------------------------------------
    loss: Literal["bt", "bce"] = _P.loss
    pairs_per_problem: int = _P.pairs_per_problem  # BT pairs drawn with replacement per problem
    # "per_round": pairs_per_problem pairs per problem from each round's rollouts, concatenated (the paper);
    # "pooled": pairs_per_problem pairs per problem drawn once from every round's rows together
    pair_sampling: Literal["per_round", "pooled"] = _P.pair_sampling
    l2_coeff: float = _P.l2_coeff  # TRL's center_rewards_coefficient; paper: 1e-3
    # "paper": l2 * mean(r^2) over every score of the batch (rm_bt.py); "trl": TRL's l2 * mean((r_c + r_r)^2)
    l2_form: Literal["paper", "trl"] = "paper"
    learning_rate: float = _P.learning_rate
    epochs: float = _P.epochs
    effective_batch_size: int = _P.effective_batch_size  # pairs (BT) or rows (BCE) per optimizer step
    per_device_batch_size: int = _P.per_device_batch_size
    max_length: int = _P.max_length
    use_lora: bool = field(default=_P.use_lora, metadata={"aliases": ["--lora"]})
    seed: int = _P.seed
    # -- optimizer, as the reference (AdamW eps 1e-5, torch's default weight decay, linear decay, no warmup) --
    adam_epsilon: float = 1e-5
    weight_decay: float = 0.01
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    # -- data ------------------------------------------------------------------------------------
    # share of train problems held out of training, to measure the verifier on problems it never saw; the paper
    # trains on every train problem (0)
    holdout_fraction: float = 0.0
    # -- model -------------------------------------------------------------------------------------
    reinit_score_head: bool = True  # N(0, 1/sqrt(hidden + 1)) as rm_bt.py
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str | None = "all-linear"
    bf16: bool | None = field(default=None, metadata=_FLAG)  # None: bf16 on a GPU that supports it, else fp32
    # None: on for GPU (paper), off on CPU
    gradient_checkpointing: bool | None = field(default=None, metadata=_FLAG)
    optim: str | None = None  # transformers' optimizer name (None: its AdamW); adafactor: no second moment
    # -- run ---------------------------------------------------------------------------------------
    max_steps: int = -1  # > 0 overrides epochs (tests, smoke runs)
    logging_steps: int = 10
    checkpoint_steps: int = 200  # resumable checkpoint every N optimizer steps; 0: never
    score_batch_size: int = 16
    bon_n: int = 5
    calibration_bins: int = 10
    evaluate: bool = True  # after training: score held-out and MBPP-test candidates, store metrics
    # experiment tracking (app/tracking.py): None takes the experiment's, then MUCODE_TRACKING(_URI); train.py
    # records what it resolved. run_name None: the verifier's name
    tracking: str | None = None  # none | tensorboard | mlflow | wandb
    tracking_uri: str | None = None
    run_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss not in ("bt", "bce"):
            raise ValueError(f"loss must be 'bt' or 'bce', not {self.loss!r}")
        if self.l2_form not in ("paper", "trl"):
            raise ValueError(f"l2_form must be 'paper' or 'trl', not {self.l2_form!r}")
        if self.pair_sampling not in ("per_round", "pooled"):
            raise ValueError(f"pair_sampling must be 'per_round' or 'pooled', not {self.pair_sampling!r}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError("holdout_fraction must be in [0, 1)")
        for name in ("pairs_per_problem", "effective_batch_size", "per_device_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.tracking is not None:
            from app.tracking import BACKENDS

            if self.tracking not in BACKENDS:
                raise ValueError(f"tracking must be one of {', '.join(BACKENDS)}, not {self.tracking!r}")
        if self.checkpoint_steps < 0:
            raise ValueError("checkpoint_steps must be >= 0 (0 turns checkpoints off)")

    @classmethod
    def from_protocol(cls, protocol: VerifierConfig | dict[str, Any] | None = None, **overrides: Any):
        """Start from an experiment's frozen ``VerifierConfig`` (or its dict), then apply ``overrides``."""
        if protocol is None:
            protocol = VerifierConfig()
        if isinstance(protocol, dict):
            protocol = VerifierConfig(**protocol)
        base = protocol.model_dump()
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in base.items() if k in names}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(f"unknown verifier config field(s): {sorted(unknown)}")
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def gradient_accumulation_steps(self, world_size: int = 1) -> int:
        """Steps to accumulate so that per_device x accumulation x processes covers the effective batch."""
        per_step = self.per_device_batch_size * max(1, world_size)
        return max(1, math.ceil(self.effective_batch_size / per_step))

    def data_config(self) -> dict[str, Any]:
        """The fields that decide what a training set holds (its identity)."""
        return {
            "loss": self.loss,
            "pairs_per_problem": self.pairs_per_problem,
            "pair_sampling": self.pair_sampling,
            "holdout_fraction": self.holdout_fraction,
            "seed": self.seed,
        }
