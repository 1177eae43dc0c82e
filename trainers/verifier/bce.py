"""BCE verifier training (the paper's ablation): unpaired (x, y, label) rows through ``BCEWithLogits``.

A small ``transformers.Trainer`` subclass on the same base model and head as BT, so bf16, gradient
accumulation, ``accelerate launch`` and DeepSpeed work the same way. Accuracy is ``logit > 0`` against the
label, as rm_bce.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainers.verifier.common import fit, training_args_kwargs
from trainers.verifier.config import VerifierTrainingConfig


@dataclass
class BCECollator:
    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
        labels = torch.tensor([float(e["label"]) for e in examples], dtype=torch.float)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _trainer_class():
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class BCETrainer(Trainer):
        # compute_loss returns the mean over its micro-batch: Trainer divides by the accumulation steps
        loss_is_scaled_for_ga = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._metrics: dict[str, list[float]] = defaultdict(list)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"].float()
            outputs = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
            )
            logits = outputs.logits.squeeze(-1).float()
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            with torch.no_grad():
                acc = ((logits > 0).float() == labels).float().mean()
                self._metrics["accuracy"].append(self.accelerator.gather_for_metrics(acc).mean().item())
                self._metrics["mean_logit"].append(self.accelerator.gather_for_metrics(logits.mean()).mean().item())
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self._metrics:
                logs.update({k: sum(v) / len(v) for k, v in self._metrics.items() if v})
                self._metrics.clear()
            super().log(logs, start_time)

    return BCETrainer


def train_bce(model, tokenizer, rows: Sequence[dict[str, Any]], config: VerifierTrainingConfig,
              output_dir: str, *, dropped: int = 0, progress: bool = True,
              run: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train on tokenized rows (``input_ids``, ``label``); returns (trainer, summary). Checkpoints and
    resuming as ``train_bt``."""
    from transformers import TrainingArguments

    if not rows:
        raise ValueError("no training rows")
    dataset = [{"input_ids": list(r["input_ids"]), "label": float(r["label"])} for r in rows]
    trainer = _trainer_class()(
        model=model,
        args=TrainingArguments(**training_args_kwargs(config, output_dir, progress=progress)),
        train_dataset=dataset,
        data_collator=BCECollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    return fit(trainer, config, examples=len(rows), dropped=dropped, unit="rows", progress=progress, run=run)
