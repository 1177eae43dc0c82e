"""A tiny model that *knows* some MBPP answers, for round tests.

A random tiny model never writes a passing program, so a round on it has no (correct, incorrect) pair and the
verifier cannot be trained. This helper trains the tiny random Llama of ``app.tiny_model`` (a few seconds of
plain next-token training on CPU) to answer the first ``train`` MBPP train problems and the first ``test`` MBPP
test problems either with the reference solution or with a wrong stub, half and half: sampled at temperature
0.7 it solves some rollouts of a problem and fails others, exactly what the verifier, the relabeling and the
evaluation need. Prompts are rendered with the backends' own ``render_prompt``, so the model sees at sampling
time the exact tokens it was trained on. Built once per machine under the system temp folder (keyed by
``KNOWING_VERSION`` and the problem counts) and shared by test sessions, like ``tests/helpers/models.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

KNOWING_VERSION = "1"
STAMP = "mucode_knowing.json"


def _problems(train: int, test: int):
    from app.datasets.registry import parse_dataset

    ds = parse_dataset("mbpp")
    tr = [p for p in ds.problems if p.split == "train"][:train]
    te = [p for p in ds.problems if p.split == "test"][:test]
    return tr + te


def knowing_targets(problem) -> tuple[str, str]:
    """(correct response, wrong response) for one problem."""
    correct = "```python\n" + problem.reference_solution.strip() + "\n```"
    wrong = f"```python\ndef {problem.entry_point}(*args):\n    return None\n```"
    return correct, wrong


def build_knowing_model(path: Path, *, train: int = 3, test: int = 3, steps: int = 600, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.env import initial_messages
    from app.tiny_model import build_tiny_model
    from workers.backends.base import render_prompt

    build_tiny_model(path, hidden_size=128, num_layers=2, num_heads=4, seed=seed)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for p in _problems(train, test):
        prompt = render_prompt(tok, initial_messages(p))
        for target in knowing_targets(p):
            ids = tok(target, add_special_tokens=False)["input_ids"] + [eot]
            rows.append((prompt + ids, [-100] * len(prompt) + ids))
    width = max(len(x) for x, _ in rows)
    pad = tok.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])
    attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    loss_value = None
    for step in range(steps):
        out = model(input_ids=input_ids, attention_mask=attention, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = float(out.loss)
        # both answers of a problem share their first tokens: the floor is about ln(2) per branch point
        if step > 100 and loss_value < 0.02:
            break
    model.eval()
    model.save_pretrained(path)
    (path / STAMP).write_text(json.dumps({"version": KNOWING_VERSION, "train": train, "test": test,
                                          "final_loss": loss_value, "steps": step + 1}))
    return path


def knowing_model_path(train: int = 3, test: int = 3) -> Path:
    """Build (once) and return the shared knowing model folder."""
    root = Path(os.environ.get("MUCODE_TEST_MODEL_CACHE", Path(tempfile.gettempdir()) / "mucode-test-models"))
    target = root / f"knowing-v{KNOWING_VERSION}-{train}-{test}"
    if (target / STAMP).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".build-{uuid.uuid4().hex}"
    try:
        build_knowing_model(scratch, train=train, test=test)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / STAMP).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
