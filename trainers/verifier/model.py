"""The verifier model: a one-output sequence-classification head on a base causal LM.

- ``load_tokenizer``: pad-token handling (a dedicated pad token when the vocabulary has one, else EOS; the
  score is read at the last non-pad token, which right padding never moves).
- ``load_model_for_training``: ``AutoModelForSequenceClassification(num_labels=1)``, the score head re-drawn
  from N(0, 1/sqrt(hidden + 1)) and dropout disabled (rm_bt.py), optional LoRA (peft, SEQ_CLS: the head is
  trained in full).
- ``save_verifier`` / ``load_verifier``: a trained verifier is a plain model folder (LoRA merged), written
  to a temporary folder and renamed into place with a ``mucode_verifier.json`` marker
  (``trainers.common.save_atomically``), so a crash never leaves a half-written model that looks finished.
torch, transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.errors import MucodeError, NotFound

MARKER = "mucode_verifier.json"
# Dedicated padding tokens some vocabularies carry (Llama-3 reserves these; the reference used id 128002).
_PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<|pad|>", "<pad>", "[PAD]")


def _looks_like_path(arg: str) -> bool:
    return (
        arg.startswith(("/", ".", "~"))
        or arg.count("/") > 1
        or arg.endswith("/")
        or (os.sep != "/" and os.sep in arg)
    )


@contextmanager
def _quiet_transformers():
    """Silence the expected 'score.weight newly initialized / lm_head unexpected' load report."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


def _load_error(path: str, exc: Exception) -> MucodeError:
    return MucodeError(
        f"cannot load model {path!r}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        " — pass an existing model folder, a pulled model (`mucode models list`) or a reachable hub name"
    )


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise _load_error(path, exc) from exc
    vocab = tok.get_vocab()
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        for cand in _PAD_CANDIDATES:
            if cand in vocab and vocab[cand] != tok.eos_token_id:
                tok.pad_token = cand
                break
        else:
            if tok.pad_token is None:
                if tok.eos_token is None:
                    raise MucodeError(f"tokenizer of {path!r} has neither a pad nor an EOS token")
                # Safe: the score is read at the last non-pad token and padding is on the right, so a trailing
                # EOS is skipped the same way in training and in scoring.
                tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _score_head(model):
    base = model
    for attr in ("score", "classifier"):
        head = getattr(base, attr, None)
        if head is not None:
            return head
    raise MucodeError(f"{type(model).__name__} has no 'score' head to initialise")


def disable_dropout(model) -> None:
    import torch

    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    cfg = model.config
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                 "classifier_dropout"):
        if isinstance(getattr(cfg, name, None), float):
            setattr(cfg, name, 0.0)


def reinit_score_head(model, seed: int | None = None) -> None:
    """score.weight ~ N(0, 1/sqrt(hidden + 1)), bias 0 (rm_bt.py, after Stiennon et al.)."""
    import torch

    head = _score_head(model)
    hidden = getattr(model.config, "hidden_size", None) or head.weight.shape[-1]
    gen = None
    if seed is not None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(head.weight.shape, generator=gen, dtype=torch.float32) / math.sqrt(hidden + 1)
        head.weight.copy_(w.to(head.weight.dtype))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()


def load_model_for_training(path: str, tokenizer, config) -> Any:
    """The base LM with a fresh one-output head, ready for BT or BCE training (LoRA-wrapped when asked)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    except Exception as exc:
        raise _load_error(path, exc) from exc
    model.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise MucodeError(
            f"tokenizer of {path!r} has {len(tokenizer)} tokens but the model embeds only "
            f"{model.get_input_embeddings().weight.shape[0]}"
        )
    if config.reinit_score_head:
        reinit_score_head(model, seed=config.seed)
    disable_dropout(model)
    if config.use_lora:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
        )
        model = get_peft_model(model, lora)
        if config.gradient_checkpointing:
            model.enable_input_require_grads()
    return model


def unwrap_peft(model):
    """A plain transformers model: LoRA weights merged in (no-op for a full fine-tune)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def save_verifier(model, tokenizer, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write the verifier (merged, fp32 or its training dtype) to ``out_dir`` atomically."""
    from trainers.common import save_atomically

    model = unwrap_peft(model)
    model.config.pad_token_id = tokenizer.pad_token_id

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, meta)

    return save_atomically(out_dir, write_main=write)


def write_marker(out_dir: str | Path, meta: dict[str, Any]) -> None:
    (Path(out_dir) / MARKER).write_text(json.dumps(meta, indent=2, default=str))


def pick_device(device: str | None = None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def inference_dtype(device: str):
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_verifier(uri: str, *, device: str | None = None, dtype=None):
    """(model in eval mode on ``device``, tokenizer) of a trained verifier folder or hub name."""
    from transformers import AutoModelForSequenceClassification

    p = Path(uri).expanduser()
    if _looks_like_path(uri) and not p.exists():
        raise NotFound(f"verifier model {uri!r} does not exist (was it trained on another machine?)")
    device = pick_device(device)
    dtype = dtype or inference_dtype(device)
    tok = load_tokenizer(uri)
    try:
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(uri, num_labels=1, dtype=dtype)
    except Exception as exc:
        raise _load_error(uri, exc) from exc
    model.config.pad_token_id = tok.pad_token_id
    model.to(device)
    model.eval()
    logging.getLogger(__name__).debug("loaded verifier %s on %s (%s)", uri, device, dtype)
    return model, tok
