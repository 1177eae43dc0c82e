"""Generator SFT: tokenization with an exact label mask, TRL's SFTTrainer, registration in the store.

The label mask (where the µCode reference code's SFT went wrong):
- the loss covers exactly the target assistant message's tokens plus the end-of-turn token that closes it, and
  nothing of the state (the prompt, earlier responses and feedback);
- no marker token: the model is trained on exactly the text it sees at inference (the chat template's rendering);
- the end-of-turn token is in the loss even when ``pad == eos`` (labels are built here and padded with -100 by
  the collator, never derived from pad ids);
- no doubled BOS: the conversation is rendered and tokenized by ``app.env.chat.render_chat`` in one step, which
  tokenizes without special tokens, so the only BOS is the one the template writes; a doubled BOS is an error;
- the same rendering as sampling (``render_chat``, same pinned template variables such as Llama 3's date): the
  state is trained on exactly the tokens the model is prompted with.
Where the template marks assistant text with ``{% generation %}`` the mask is the template's assistant mask
restricted to the target (the last message); otherwise it is the token boundary between the rendered prompt
(``add_generation_prompt=True``) and the full conversation, up to and including the end-of-turn token (a
newline the template writes after it is left out).

We tokenize ourselves and hand TRL a dataset with ``input_ids`` and ``labels`` (used as is by TRL 1.16): TRL's
built-in ``assistant_only_loss`` trains every assistant message of a multi-turn state (earlier responses too),
and its ``completion_only_loss`` keeps the template's trailing newline after the end-of-turn token; the test
suite checks that on a template with markers our labels equal TRL's prompt-completion + assistant-mask labels.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.env.chat import render_chat
from trainers import checkpoints
from trainers.common import resolve_base_model, world_size
from trainers.sft.config import GeneratorTrainConfig

if TYPE_CHECKING:
    from app.db.models import ModelVersion
    from app.store import Store

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# End-of-turn tokens of common chat templates; only those the tokenizer has as special tokens count.
EOT_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>", "<|endoftext|>", "</s>")
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


class MaskError(ValueError):
    """An example whose label mask cannot be built exactly (a broken template or tokenizer)."""


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and bool(_GENERATION.search(template))


def end_of_turn_ids(tokenizer, extra: Iterable[int] = ()) -> set[int]:
    """Token ids that close an assistant turn: eos, the model's generation eos ids, known EOT special tokens."""
    ids = {int(i) for i in extra if i is not None}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "get_added_vocab", dict)() or {}
    for tok in EOT_TOKENS:
        if tok in special or tok in added:
            tid = tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid >= 0:
                ids.add(tid)
    bos = tokenizer.bos_token_id
    if bos is not None and bos != tokenizer.eos_token_id:
        ids.discard(int(bos))
    return ids


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    boundary: int  # first token of the assistant target (after the generation prompt)
    prompt_is_prefix: bool  # the rendered prompt is a token prefix of the full conversation
    method: str  # "assistant_mask" | "boundary"

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def tokenize_example(
    tokenizer,
    messages: list[dict[str, str]],
    *,
    eot_ids: set[int] | None = None,
    chat_template: str | None = None,
) -> Tokenized:
    """``messages`` = state + the assistant target (last). Labels: the target's tokens + its end-of-turn token."""
    if not messages or messages[-1].get("role") != "assistant":
        raise MaskError("the last message of an SFT example must be the assistant target")
    eot = eot_ids if eot_ids is not None else end_of_turn_ids(tokenizer)
    template = chat_template or tokenizer.chat_template
    markers = has_generation_markers(template)
    # The same rendering as sampling (app.env.chat): the state's tokens are exactly the prompt the model sees.
    full = render_chat(
        tokenizer, messages, add_generation_prompt=False, tokenize=True, chat_template=chat_template,
        assistant_mask=markers,
    )
    ids = full.input_ids
    prompt_ids = render_chat(
        tokenizer, messages[:-1], add_generation_prompt=True, tokenize=True, chat_template=chat_template
    ).input_ids
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        raise MaskError("the tokenized conversation starts with two BOS tokens")
    b = 0
    for a, c in zip(prompt_ids, ids, strict=False):
        if a != c:
            break
        b += 1
    prompt_is_prefix = b == len(prompt_ids)
    n = len(ids)

    start = end = None
    method = "boundary"
    if markers:
        amask = full.assistant_mask or []
        positions = [i for i in range(b, n) if amask[i]]
        if positions:
            method = "assistant_mask"
            start, end = positions[0], positions[-1]
            # A template that leaves the end-of-turn token outside {% generation %}: take it in.
            if ids[end] not in eot and end + 1 < n and ids[end + 1] in eot:
                end += 1
    if start is None:
        start = b
        closing = [i for i in range(b, n) if ids[i] in eot]
        if not closing:
            raise MaskError(
                "no end-of-turn token after the target: the chat template does not close assistant turns with a "
                f"known end-of-turn token (eos/eot ids {sorted(eot)})"
            )
        end = closing[-1]
    if ids[end] not in eot:
        raise MaskError("the target's label span does not end with the end-of-turn token")
    if start > end:
        raise MaskError("empty target")
    labels = [IGNORE_INDEX] * n
    labels[start : end + 1] = ids[start : end + 1]
    return Tokenized(ids, labels, b, prompt_is_prefix, method)


def _tokenize_row(example: dict[str, Any], tokenizer, eot: set[int], max_length: int | None) -> dict[str, Any]:
    tok = tokenize_example(tokenizer, example["messages"], eot_ids=eot)
    return {
        "input_ids": tok.input_ids,
        "labels": tok.labels,
        "too_long": max_length is not None and len(tok.input_ids) > max_length,
        "prompt_is_prefix": tok.prompt_is_prefix,
        "mask_method": tok.method,
        "num_target_tokens": tok.num_target_tokens,
    }


def tokenize_dataset(
    tokenizer,
    records: list[dict[str, Any]],
    *,
    max_length: int | None,
    eot_ids: set[int] | None = None,
    num_proc: int | None = None,
):
    """SFT records (``messages`` = state + target) -> a ``datasets.Dataset`` of ``input_ids``/``labels``.

    Over-long examples are left out and counted (a truncated target would lose its end-of-turn token).
    ``num_proc`` > 1 tokenizes in parallel processes (worth it from a few thousand examples).
    """
    from datasets import Dataset

    eot = eot_ids if eot_ids is not None else end_of_turn_ids(tokenizer)
    ds = Dataset.from_list([{"messages": r["messages"]} for r in records])
    ds = ds.map(
        _tokenize_row,
        fn_kwargs={"tokenizer": tokenizer, "eot": eot, "max_length": max_length},
        remove_columns=["messages"],
        num_proc=num_proc if num_proc and num_proc > 1 and len(ds) >= 2 * num_proc else None,
        desc="Tokenizing SFT examples",
    )
    too_long = ds["too_long"]
    kept_lengths = [len(x) for x, t in zip(ds["input_ids"], too_long, strict=True) if not t]
    methods = sorted(set(ds["mask_method"]))
    stats = {
        "examples": len(ds),
        "too_long": int(sum(too_long)),
        "prompt_not_prefix": int(sum(1 for x in ds["prompt_is_prefix"] if not x)),
        "target_tokens": int(sum(n for n, t in zip(ds["num_target_tokens"], too_long, strict=True) if not t)),
        "tokens": int(sum(kept_lengths)),
        "mask_method": methods[0] if len(methods) == 1 else ",".join(methods),
        "kept": len(kept_lengths),
    }
    if stats["too_long"]:
        ds = ds.filter(lambda x: not x, input_columns=["too_long"])
    return ds.select_columns(["input_ids", "labels"]), stats


# -- training ------------------------------------------------------------------------------------------
def model_name_for(training_set_name: str) -> str:
    """The default generator version name of a training set: ``exp/r0/sft-mucode-both-1a2b`` -> ``.../gen-...``."""
    if "/sft-" in training_set_name:
        return training_set_name.replace("/sft-", "/gen-", 1)
    return f"{training_set_name}/gen"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "generator"


def _losses(log_history: list[dict[str, Any]]) -> list[float]:
    return [float(h["loss"]) for h in log_history if "loss" in h and "train_loss" not in h]


def _logged_mean_loss(log_history: list[dict[str, Any]], default: float) -> float:
    """The mean loss per optimizer step over the whole run, from the logged averages (exact when every step is
    logged, the default)."""
    total = steps = 0.0
    last = 0
    for h in log_history:
        if "loss" in h and "train_loss" not in h and h.get("step"):
            n = int(h["step"]) - last
            total += float(h["loss"]) * n
            steps += n
            last = int(h["step"])
    return total / steps if steps else default


# Settings that change nothing the optimizer sees: checkpoints written under other values stay resumable.
_NOT_IN_RUN = {
    "database_url", "register", "set_round_output", "overwrite", "checkpoint_steps", "logging_steps",
    "dataloader_num_workers", "dataset_num_proc", "merge_lora", "name", "output_dir", "training_set",
    "base_model", "tracking", "tracking_uri",
}


def _tracking(cfg: GeneratorTrainConfig, exp: dict[str, Any] | None):
    """The run's tracker: its own setting, else its experiment's, else the environment's."""
    from app.tracking import require, resolve

    tracker = resolve((exp or {}).get("config"), experiment=(exp or {}).get("name"), backend=cfg.tracking,
                      uri=cfg.tracking_uri)
    require(tracker.backend)
    return tracker


def _run_identity(cfg: GeneratorTrainConfig, training_set_id: int, init_path: str, world_size: int,
                  tok_stats: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must share with this run to be resumed by it."""
    return {
        **{k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_RUN},
        "training_set_id": training_set_id,
        "init_path": init_path,
        "world_size": world_size,
        "examples": tok_stats["kept"],
        "tokens": tok_stats["tokens"],
    }


def _open_store(cfg: GeneratorTrainConfig, store: Store | None) -> Store:
    """The given store, else the one ``cfg.database_url`` (or the settings) names, checked to be migrated."""
    from app.errors import MucodeError

    if store is not None:
        return store
    from app.store import Store

    store = Store(cfg.database_url) if cfg.database_url else Store.from_settings()
    if not store.is_migrated():
        raise MucodeError("the database is not migrated to the current schema: run `mucode db upgrade`")
    return store


def version_dict(mv: ModelVersion) -> dict[str, Any]:
    """A registered generator as ``train_generator`` returns it (plain JSON: it is also a job's result)."""
    return {
        "id": mv.id, "name": mv.name, "kind": mv.kind, "base_model": mv.base_model, "uri": mv.uri,
        "parent_id": mv.parent_id, "round_id": mv.round_id, "training_set_id": mv.training_set_id,
        "config": mv.config, "metrics": mv.metrics,
    }


def _starting_point(cfg: GeneratorTrainConfig, store: Store, ts: dict[str, Any]):
    """(base model, parent generator or None, the model the run starts from) of a training set's run."""
    from app.errors import MucodeError

    rnd, exp = ts["round"], ts["experiment"]
    base_model = cfg.base_model or (exp or {}).get("base_model")
    if not base_model:
        raise MucodeError(
            "no base model: pass --base-model (the training set has no experiment to take it from)"
        )
    parent = None
    if rnd is not None and rnd.get("generator_id"):
        parent = store.get_model_version(int(rnd["generator_id"]), required=False)
    if cfg.init_model:
        init_from = cfg.init_model
    elif cfg.init == "parent" and parent is not None:
        init_from = parent.uri
    else:
        init_from = base_model
    return base_model, parent, init_from


def _load_model(cfg: GeneratorTrainConfig, init_path: str, init_from: str):
    """(tokenizer, causal LM in fp32, end-of-turn token ids) of the model the run starts from."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.errors import MucodeError

    tokenizer = AutoTokenizer.from_pretrained(init_path)
    if tokenizer.chat_template is None:
        raise MucodeError(f"the tokenizer of {init_from} has no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # labels carry the EOT explicitly: pad == eos masks nothing
    load_kwargs: dict[str, Any] = {"dtype": torch.float32}
    if cfg.attn_implementation:
        load_kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(init_path, **load_kwargs)
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    extra_eot = gen_eos if isinstance(gen_eos, list) else [gen_eos]
    return tokenizer, model, end_of_turn_ids(tokenizer, extra_eot)


def _num_proc(cfg: GeneratorTrainConfig, examples: int, processes: int) -> int:
    if cfg.dataset_num_proc is not None:
        return cfg.dataset_num_proc
    # auto: parallel tokenization for big sets, the CPUs shared among the processes
    return max(1, min(8, (os.cpu_count() or 1) // processes)) if examples >= 5000 else 1


def _tags(name: str, ts: dict[str, Any]) -> dict[str, Any]:
    """The tracker tags of a generator run."""
    tags = {"model": name, "kind": "generator", "training_set": ts["name"]}
    if ts["experiment"] is not None:
        tags["experiment"] = ts["experiment"]["name"]
    if ts["round"] is not None:
        tags["round"] = ts["round"].get("index")
    return tags


def _sft_trainer(cfg: GeneratorTrainConfig, model, tokenizer, dataset, args):
    """TRL's SFTTrainer on the tokenized set (LoRA-wrapped when asked), writing resumable checkpoints."""
    from trl import SFTTrainer

    peft_config = None
    if cfg.use_lora:
        from peft import LoraConfig

        targets: Any = cfg.lora_target_modules
        if targets != "all-linear":
            targets = [x.strip() for x in targets.split(",") if x.strip()]
        peft_config = LoraConfig(
            task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=targets,
        )
    return SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[checkpoints.callback()],
    )


def _metrics(trainer, result, resume: str | None, *, seconds: float, processes: int, examples: int,
             tok_stats: dict[str, Any]) -> dict[str, Any]:
    """The training metrics a generator version records."""
    losses = _losses(trainer.state.log_history)
    train_loss = float(result.training_loss)
    if resume is not None:  # the Trainer's figure covers only the steps of this process's run
        train_loss = _logged_mean_loss(trainer.state.log_history, train_loss)
    args = trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
    return {
        "train_loss": train_loss,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "train_losses": losses[:2000],
        "global_steps": int(trainer.state.global_step),
        "resumed_from_step": checkpoints.checkpoint_step(resume),
        "epochs": float(trainer.state.epoch or 0.0),
        "train_seconds": round(seconds, 2),
        "world_size": trainer.accelerator.num_processes,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "effective_batch_size": batch,
        "training_set_examples": examples,
        **{f"data_{k}": v for k, v in tok_stats.items()},
    }


def _save(cfg: GeneratorTrainConfig, trainer, tokenizer, out_dir: Path) -> None:
    """Write the trained model (merged LoRA, adapter only, or full) and its tokenizer to ``out_dir``,
    whole."""
    from trainers.common import save_atomically

    acc = trainer.accelerator
    merge = cfg.use_lora and cfg.merge_lora

    def write_all(tmp: Path) -> None:
        if not merge:
            # every process (ZeRO-3/FSDP gather the weights); the main one writes
            trainer.save_model(str(tmp))

    def write_main(tmp: Path) -> None:
        if merge:
            acc.unwrap_model(trainer.model).merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    save_atomically(out_dir, write_all=write_all, write_main=write_main, accelerator=acc)


def train_generator(cfg: GeneratorTrainConfig, store: Store | None = None) -> dict[str, Any]:
    """Train a generator on an SFT training set and register it. Returns the model version (as a dict).

    Runs the same under ``accelerate launch`` (every process trains; the main one saves and registers).
    Idempotent: a registered version with the same name is returned as is unless ``cfg.overwrite``; a run that
    was killed resumes from its last complete checkpoint (``trainers/checkpoints.py``).
    """
    from app.config import get_settings
    from app.errors import MucodeError
    from app.tracking import environment as tracking_environment
    from trainers.relabel import example_records

    store = _open_store(cfg, store)
    if cfg.training_set is None:
        raise MucodeError("--training-set is required")
    ts = store.sft_training_set(cfg.training_set)
    name = cfg.name or model_name_for(ts["name"])
    if not cfg.overwrite:
        existing = store.get_model_version(name, required=False)
        if existing is not None:
            log.info("generator %s already registered (id %s): nothing to do", name, existing.id)
            return version_dict(existing)

    base_model, parent, init_from = _starting_point(cfg, store, ts)
    init_path = resolve_base_model(init_from)  # a bad path or a model not pulled yet fails here, saying so
    tracker = _tracking(cfg, ts["experiment"])  # a missing tracker package fails here, before any loading
    cfg = dataclasses.replace(cfg, tracking=tracker.backend, tracking_uri=tracker.uri)
    records = list(example_records(store, ts["id"]))
    if not records:
        raise MucodeError(f"training set {ts['name']} has no examples")

    processes = world_size()
    tokenizer, model, eot = _load_model(cfg, init_path, init_from)
    dataset, tok_stats = tokenize_dataset(tokenizer, records, max_length=cfg.max_length, eot_ids=eot,
                                          num_proc=_num_proc(cfg, len(records), processes))
    if tok_stats["kept"] == 0:
        raise MucodeError(f"every example is longer than max_length={cfg.max_length}")
    out_dir = Path(cfg.output_dir or Path(get_settings().artifacts_dir) / "models" / _safe(name))
    ckpt_dir = checkpoints.checkpoints_dir(out_dir)

    # TRL's integrations read where to write from the environment, from creating the trainer to its end
    with tracking_environment(tracker, name, _tags(name, ts)):
        args = cfg.to_sft_config(str(ckpt_dir), world_size=processes, run_name=name)
        trainer = _sft_trainer(cfg, model, tokenizer, dataset, args)
        resume = None
        if cfg.checkpoint_steps > 0:
            resume = checkpoints.prepare_resume(
                trainer.accelerator, ckpt_dir, _run_identity(cfg, ts["id"], init_path, processes, tok_stats)
            )
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume)
    metrics = _metrics(trainer, result, resume, seconds=time.perf_counter() - t0, processes=processes,
                       examples=len(records), tok_stats=tok_stats)

    _save(cfg, trainer, tokenizer, out_dir)
    acc = trainer.accelerator
    mv: dict[str, Any] = {"name": name, "uri": str(out_dir), "metrics": metrics}
    if acc.is_main_process:
        if cfg.register:
            config = {
                **cfg.to_dict(),
                "database_url": None,
                "init_from": init_from,
                "base_model": base_model,
                "training_set_id": ts["id"],
                "training_set_name": ts["name"],
                "relabel": ts["config"],
                "effective_batch_size_actual": metrics["effective_batch_size"],
                "adapter_only": bool(cfg.use_lora and not cfg.merge_lora),
            }
            mv_id = store.sft_register_generator(
                name=name, base_model=base_model, uri=str(out_dir.resolve()),
                parent_id=parent.id if parent else None, round_id=ts["round_id"], training_set_id=ts["id"],
                config=config, metrics=metrics,
            )
            if cfg.set_round_output and ts["round_id"] is not None:
                store.sft_set_round_generator(ts["round_id"], mv_id)
            mv = version_dict(store.get_model_version(mv_id))
        # Only now: a run killed before its version is registered trains again, from the last checkpoint.
        checkpoints.remove(ckpt_dir)
    acc.wait_for_everyone()
    return mv
