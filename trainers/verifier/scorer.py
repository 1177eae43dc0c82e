"""Batched verifier scoring of (first prompt, response) pairs; one model kept loaded per process.

The input is built exactly as in training (``data.encode``). Sequences longer than ``max_length`` keep their
first ``max_length - 1`` tokens plus the end-of-turn token, so every candidate gets a score (training drops
such rows instead, as TRL does). Batches are formed from length-sorted inputs to waste little padding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from trainers.verifier.data import encode

_lock = threading.Lock()
_cached: dict[str, Any] = {"key": None, "scorer": None}


class VerifierScorer:
    def __init__(self, model, tokenizer, *, device: str | None = None, batch_size: int | None = None,
                 max_length: int = 2048) -> None:
        from trainers.verifier.model import pick_device

        self.model = model
        self.tokenizer = tokenizer
        self.device = device or pick_device(None)
        self.batch_size = batch_size or (64 if self.device.startswith("cuda") else 16)
        self.max_length = max_length
        self.truncated = 0  # inputs cut to max_length so far
        self.scored = 0
        self.seconds = 0.0

    @classmethod
    def load(cls, uri: str, *, device: str | None = None, dtype=None, batch_size: int | None = None,
             max_length: int = 2048) -> VerifierScorer:
        from trainers.verifier.model import load_verifier, pick_device

        device = pick_device(device)
        model, tok = load_verifier(uri, device=device, dtype=dtype)
        return cls(model, tok, device=device, batch_size=batch_size, max_length=max_length)

    def _ids(self, prompt: str, response: str) -> list[int]:
        ids = encode(self.tokenizer, prompt, response)
        if len(ids) > self.max_length:
            self.truncated += 1
            eos = self.tokenizer.eos_token_id
            ids = ids[: self.max_length - 1] + ([eos] if eos is not None else [ids[self.max_length - 1]])
        return ids

    def score_ids(self, seqs: Sequence[Sequence[int]]) -> list[float]:
        import torch

        t0 = time.perf_counter()
        out: list[float] = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]), reverse=True)
        pad = self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for b in range(0, len(order), self.batch_size):
                    idx = order[b : b + self.batch_size]
                    width = max(len(seqs[i]) for i in idx)
                    input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(idx), width), dtype=torch.long)
                    for row, i in enumerate(idx):
                        ids = torch.as_tensor(seqs[i], dtype=torch.long)
                        input_ids[row, : len(ids)] = ids
                        mask[row, : len(ids)] = 1
                    logits = self.model(
                        input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False
                    ).logits
                    vals = logits[:, 0].float().cpu().tolist()
                    for row, i in enumerate(idx):
                        out[i] = float(vals[row])
        finally:
            if was_training:
                self.model.train()
        self.scored += len(seqs)
        self.seconds += time.perf_counter() - t0
        return out

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scores of (first user message, response) pairs, in input order."""
        return self.score_ids([self._ids(p, r) for p, r in pairs])


def get_scorer(uri: str, *, device: str | None = None, batch_size: int | None = None,
               max_length: int = 2048) -> VerifierScorer:
    """The process's scorer for ``uri``: loaded once and kept (one model at a time, to bound GPU memory)."""
    from trainers.verifier.model import pick_device

    device = pick_device(device)
    key = f"{uri}|{device}|{max_length}"
    with _lock:
        if _cached["key"] != key:
            _cached["scorer"] = None  # free the previous model first
            _cached["scorer"] = VerifierScorer.load(uri, device=device, batch_size=batch_size,
                                                    max_length=max_length)
            _cached["key"] = key
        scorer = _cached["scorer"]
        if batch_size:
            scorer.batch_size = batch_size
        return scorer


def clear_scorer() -> None:
    with _lock:
        _cached["key"] = None
        _cached["scorer"] = None
