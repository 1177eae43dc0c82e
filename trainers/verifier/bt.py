"""Bradley-Terry verifier training through TRL's ``RewardTrainer``.

Loss per batch of (correct, incorrect) pairs of the same problem: ``-log σ(r_c - r_r)`` plus the L2 term that
keeps scores centred. TRL's ``RewardConfig.center_rewards_coefficient`` carries the coefficient (paper 1e-3).
TRL's own term is ``c · mean((r_c + r_r)²)`` (pair sums); the reference (rm_bt.py) uses ``c · mean(r²)`` over
every score of the batch. With ``l2_form="paper"`` (default) ``MucodeRewardTrainer`` swaps TRL's term for the
reference's — the rest (data collator, metrics, accelerate/DeepSpeed, bf16) is TRL's unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainers.verifier.common import fit, training_args_kwargs
from trainers.verifier.config import VerifierTrainingConfig


def _trainer_class():
    import torch
    from trl import RewardTrainer

    class MucodeRewardTrainer(RewardTrainer):
        l2_form = "paper"

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            coeff = self.args.center_rewards_coefficient
            if coeff and self.l2_form == "paper":
                rewards = outputs.logits.squeeze(-1)
                r_c, r_r = torch.chunk(rewards, chunks=2)
                loss = loss - coeff * torch.mean((r_c + r_r) ** 2) + coeff * torch.mean(rewards**2)
            return (loss, outputs) if return_outputs else loss

    return MucodeRewardTrainer


def make_reward_config(config: VerifierTrainingConfig, output_dir: str, *, progress: bool = True):
    from trl import RewardConfig

    kw = training_args_kwargs(config, output_dir, progress=progress)
    return RewardConfig(
        **kw,
        max_length=config.max_length,
        center_rewards_coefficient=config.l2_coeff or None,
        disable_dropout=True,
    )


def train_bt(model, tokenizer, rows: Sequence[dict[str, Any]], config: VerifierTrainingConfig,
             output_dir: str, *, dropped: int = 0, progress: bool = True,
             run: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train on tokenized pairs (``chosen_ids``/``rejected_ids``); returns (trainer, summary).

    Checkpoints go to ``output_dir`` every ``config.checkpoint_steps`` steps, and training resumes from the
    last complete one there when it belongs to the same ``run`` (``trainers/checkpoints.py``)."""
    from datasets import Dataset

    if not rows:
        raise ValueError("no training pairs")
    dataset = Dataset.from_list(
        [{"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]} for r in rows]
    )
    cls = _trainer_class()
    cls.l2_form = config.l2_form
    trainer = cls(model=model, args=make_reward_config(config, output_dir, progress=progress),
                  train_dataset=dataset, processing_class=tokenizer)
    return fit(trainer, config, examples=len(rows), dropped=dropped, unit="pairs", progress=progress, run=run)
