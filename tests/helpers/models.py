"""Model fixtures for tests: the tiny random Llama, built once and shared.

``tests/conftest.py`` registers this module as a plugin, so any test takes the fixture by name:

    def test_something(tiny_model_dir):
        ...  # a model folder: config.json, safetensors, tokenizer with a ChatML template

The model is built under the system temp folder, keyed by ``TINY_VERSION``, so repeated test sessions (and
parallel ones) reuse one build; it is written to a private folder first and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest


def tiny_model_path() -> Path:
    """Build (once) and return the shared tiny model folder."""
    from app.tiny_model import TINY_VERSION, build_tiny_model

    root = Path(os.environ.get("MUCODE_TEST_MODEL_CACHE", Path(tempfile.gettempdir()) / "mucode-test-models"))
    target = root / f"tiny-v{TINY_VERSION}"
    if (target / "mucode_tiny.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".build-{uuid.uuid4().hex}"
    try:
        build_tiny_model(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "mucode_tiny.json").is_file():  # not a parallel build that won: a real error
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Llama model folder (session-scoped, shared between sessions)."""
    return tiny_model_path()


def conv(text: str) -> list[dict]:
    """A one-message conversation."""
    return [{"role": "user", "content": text}]


# Prompts for the sampling backends: a task, a test, feedback.
CONVS = [
    conv("Write a Python function implementation for the following prompt:\n\nadd one"),
    conv("assert f(1) == 2"),
    conv("Feedback: Code passed all tests " * 4),
]


# A tiny model taught to answer two prompts with a code block followed by prose (``stop_after_code``).
RAMBLING = {
    "add one to x": "```python\ndef f(x):\n    return x + 1\n```\nThis adds one to x and returns it, as asked.",
    "print two": "Sure:\n```python\nprint(2)\n```\nDone: it prints two, then says more and more.",
}


def rambling_model_dir(path: Path, *, hidden_size: int = 128, num_heads: int = 4) -> Path:
    """Build the tiny model in ``path`` and train it on ``RAMBLING``'s answers (greedy decoding repeats them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.tiny_model import build_tiny_model
    from workers.backends.base import render_prompt

    path = build_tiny_model(path, hidden_size=hidden_size, num_layers=2, num_heads=num_heads, seed=0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for prompt, target in RAMBLING.items():
        p = render_prompt(tok, [{"role": "user", "content": prompt}])
        ids = tok(target, add_special_tokens=False)["input_ids"] + [eot]
        rows.append((p + ids, [-100] * len(p) + ids))
    width = max(len(x) for x, _ in rows)
    input_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x, _ in rows])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])
    attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.05, f"the rambling model did not learn its answers (loss {loss.item():.3f})"
    model.save_pretrained(path)
    return path
