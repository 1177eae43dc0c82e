"""The learned verifier R(x, y): datasets from the store, BT (TRL) and BCE training, scoring, metrics.

Modules: ``config`` (VerifierTrainingConfig), ``data`` (rows, pairs, tokenization), ``model`` (load/save),
``bt`` / ``bce`` (trainers), ``train`` (entry point, also under ``accelerate launch``), ``scorer`` (batched
scoring), ``evaluate`` (metrics per verifier version). Heavy libraries are imported inside functions.
"""

from trainers.verifier.config import VerifierTrainingConfig

__all__ = ["VerifierTrainingConfig"]
