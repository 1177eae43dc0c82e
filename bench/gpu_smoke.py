"""GPU smoke check: sampling, verifier and generator training, and scoring on one CUDA device, in one table.

Needs torch, transformers, TRL and mucode itself: no vLLM, no network, no database. The model is built on the
spot (``app/tiny_model.py``: a random Llama with a local tokenizer and chat template, saved as a normal model
folder) at a size that keeps a GPU busy; the prompts are the shipped MBPP train problems. Under 8 minutes on
one H100. Run from the repository root:

    python bench/gpu_smoke.py [--json out.json]
    python bench/gpu_smoke.py --cpu-dry-run      # the same code on the CPU with the tiny model (~1-2 min)

What it checks (exit status 1 if one fails) and measures:
1. sampling: the seeded noise is the same on CUDA as on the CPU; ``TransformersBackend.generate`` against plain
   ``model.generate`` with the backend's seeded sampler on the same padded rows (bf16 and fp32): how many
   samples are identical for the same seeds (all must be in fp32), the same seeds give the same text on a
   second call, greedy equals bare greedy ``generate``, and tokens/s of both;
2. training: a few Bradley-Terry verifier steps (TRL ``RewardTrainer`` through ``trainers.verifier.bt``) and
   SFT generator steps (TRL ``SFTTrainer`` on the SFT config ``trainers.sft.config`` builds), bf16 on a GPU:
   the loss is finite, the weights moved, steps/s;
3. scoring: the trained verifier saved and loaded the way workers load it, candidates/s; a candidate scored
   alone gets the score it got in a batch.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The model and the work per stage: on a GPU a SmolLM2-135M-sized model (12 layers of 768), on the CPU the
# tiny one; both read the same MBPP prompts.
SIZES = {
    "cuda": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "problems": 16, "rollouts": 4,
             "new_tokens": 256, "train_steps": 8, "batch": 8, "score": 512},
    "cpu": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "problems": 4, "rollouts": 2,
            "new_tokens": 32, "train_steps": 2, "batch": 2, "score": 32},
}  # fmt: skip


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, bool | None]] = []

    def add(self, stage: str, what: str, value, ok: bool | None = None) -> None:
        self.rows.append((stage, what, str(value), ok))

    @property
    def ok(self) -> bool:
        return all(ok is not False for *_, ok in self.rows)

    def render(self) -> str:
        w = [max(len(r[i]) for r in self.rows) for i in range(3)]
        lines = [f"{'stage':<{w[0]}}  {'check':<{w[1]}}  {'value':<{w[2]}}  result", "-" * (sum(w) + 14)]
        for stage, what, value, ok in self.rows:
            mark = "" if ok is None else ("ok" if ok else "FAIL")
            lines.append(f"{stage:<{w[0]}}  {what:<{w[1]}}  {value:<{w[2]}}  {mark}")
        return "\n".join(lines)

    def as_dict(self) -> list[dict]:
        return [{"stage": s, "check": c, "value": v, "ok": ok} for s, c, v, ok in self.rows]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _problems(n: int):
    return _train_problems()[:n]


@functools.cache
def _train_problems():
    from app.datasets.registry import parse_dataset

    return [q for q in parse_dataset("mbpp").problems if q.split == "train"]


# -- 1. sampling ------------------------------------------------------------------------------------------------
def check_noise(table: Table) -> None:
    import torch

    from workers.backends.transformers_backend import step_keys, token_uniforms

    keys = torch.from_numpy(step_keys(list(range(16)), 4)[:, :1].view("int32"))
    same = bool(torch.equal(token_uniforms(keys, 128256), token_uniforms(keys.cuda(), 128256).cpu()))
    table.add("sampling", "seeded noise CUDA == CPU", same, same)


def _plain_generate(be, convs, seeds, params, device: str):
    """``model.generate`` with the backend's seeded sampler on the same left-padded rows: (text, tokens)."""
    import torch
    from transformers import LogitsProcessorList

    from workers.backends.transformers_backend import _make_sampler, generated_rows, left_padded, step_keys

    ids, mask = left_padded([be.prompt_ids(c) for c in convs], be.pad_id)
    width = ids.shape[1]
    keys = torch.from_numpy(step_keys(seeds, params.max_tokens).view("int32")).to(device)
    procs = LogitsProcessorList([_make_sampler(keys, width, params.temperature, params.top_p)])
    with torch.inference_mode():
        out = be.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                max_new_tokens=params.max_tokens, do_sample=False, logits_processor=procs,
                                pad_token_id=be.pad_id, eos_token_id=be.eos_ids)
    return generated_rows(be, out[:, width:].tolist())


def check_sampling(table: Table, model_dir: str, device: str, size: dict) -> None:
    import torch

    from app.env import initial_messages
    from workers.backends.base import SamplingParams, render_prompt
    from workers.backends.transformers_backend import TransformersBackend

    problems = _problems(size["problems"])
    convs = [initial_messages(q) for q in problems for _ in range(size["rollouts"])]
    seeds = list(range(len(convs)))
    params = SamplingParams(temperature=0.7, top_p=1.0, max_tokens=size["new_tokens"])
    for dtype in ("bfloat16", "float32") if device == "cuda" else ("float32",):
        be = TransformersBackend(model_dir, device=device, dtype=dtype)
        runs = {}
        for name, fn in (("generate", lambda be=be: _plain_generate(be, convs, seeds, params, device)),
                         ("backend", lambda be=be: [(g[0].text, g[0].completion_tokens)
                                                     for g in be.generate(convs, params, seeds)])):
            fn()  # warm-up (kernels, allocator)
            _sync(device)
            t0 = time.perf_counter()
            rows = fn()
            _sync(device)
            runs[name] = (rows, time.perf_counter() - t0)
        (plain, t_plain), (mine, t_mine) = runs["generate"], runs["backend"]
        same = sum(a == b for a, b in zip(plain, mine, strict=True))
        # fp32 must agree everywhere; in bf16 a different batch shape may round a logit differently
        table.add("sampling", f"{dtype}: samples identical to generate", f"{same}/{len(convs)}",
                  same == len(convs) if dtype == "float32" else None)
        again = [(g[0].text, g[0].completion_tokens) for g in be.generate(convs, params, seeds)]
        table.add("sampling", f"{dtype}: same seeds, same samples again", again == mine, again == mine)
        rate_plain = sum(n for _, n in plain) / t_plain
        rate_mine = sum(n for _, n in mine) / t_mine
        table.add("sampling", f"{dtype}: tokens/s generate | backend",
                  f"{rate_plain:.0f} | {rate_mine:.0f} ({rate_mine / rate_plain:.2f}x)")
        g = be.generate(convs[:1], SamplingParams(0.0, 1.0, 32), [0])[0][0].text
        ids = torch.tensor([render_prompt(be.tokenizer, convs[0])], device=device)
        with torch.inference_mode():
            bare = be.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                                     do_sample=False, pad_token_id=be.pad_id, eos_token_id=be.eos_ids)
        greedy_ok = g == be.tokenizer.decode(bare[0, ids.shape[1] :], skip_special_tokens=True)
        table.add("sampling", f"{dtype}: greedy == bare greedy generate", greedy_ok, greedy_ok)
        be.close()


# -- 2. training ---------------------------------------------------------------------------------------------------
def _answers(problems) -> list[tuple[str, str, str]]:
    """(prompt, correct answer, wrong answer) per problem: the reference solution and a broken copy."""
    from app.env import initial_messages

    out = []
    for q in problems:
        good = f"```python\n{q.reference_solution}\n```"
        bad = f"```python\n{q.reference_solution.replace('return', 'return None and')}\n```"
        out.append((initial_messages(q)[0]["content"], good, bad))
    return out


def _moved(before: dict, model) -> bool:
    return any(not p.detach().cpu().float().equal(before[n]) for n, p in model.named_parameters() if n in before)


def _snapshot(model, k: int = 4) -> dict:
    return {n: p.detach().cpu().float().clone() for n, p in list(model.named_parameters())[:k]}


def _training_rows(table, label: str, trainer, device: str, batch: str, steps: int) -> None:
    """Where the trainer ran, in which precision, and its first and last loss."""
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    bf16 = bool(trainer.args.bf16)
    on = next(trainer.model.parameters()).device.type
    table.add(label, "device | bf16", f"{on} | {bf16}", on == device and bf16 == (device == "cuda"))
    table.add(label, f"{trainer.state.global_step} steps x {batch}: loss first -> last",
              f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no loss logged",
              bool(losses) and all(math.isfinite(x) for x in losses) and trainer.state.global_step == steps)


def check_verifier_training(table: Table, model_dir: str, out: Path, device: str, size: dict):
    from trainers.verifier.bt import train_bt
    from trainers.verifier.config import VerifierTrainingConfig
    from trainers.verifier.data import BTExample, tokenize_bt
    from trainers.verifier.model import load_model_for_training, load_tokenizer

    steps, batch = size["train_steps"], size["batch"]
    cfg = VerifierTrainingConfig(learning_rate=1e-4, effective_batch_size=batch, per_device_batch_size=batch,
                                 max_steps=steps, max_length=1024, logging_steps=1, checkpoint_steps=0,
                                 evaluate=False, gradient_checkpointing=device == "cuda")
    tok = load_tokenizer(model_dir)
    model = load_model_for_training(model_dir, tok, cfg)
    examples = [BTExample(i, p, good, bad, 2 * i, 2 * i + 1)
                for i, (p, good, bad) in enumerate(_answers(_problems(steps * batch)))]
    rows, _ = tokenize_bt(tok, examples, cfg.max_length)
    before = _snapshot(model)
    t0 = time.perf_counter()
    trainer, _ = train_bt(model, tok, rows, cfg, str(out / "verifier-ckpt"), progress=False)
    seconds = time.perf_counter() - t0
    _training_rows(table, "verifier BT", trainer, device, f"{batch} pairs", steps)
    table.add("verifier BT", "weights moved | steps/s", f"{_moved(before, trainer.model)} | {steps / seconds:.2f}",
              _moved(before, trainer.model))
    return trainer.model, tok


def check_generator_training(table: Table, model_dir: str, out: Path, device: str, size: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from app.env import initial_messages
    from trainers.sft.config import GeneratorTrainConfig
    from trainers.sft.trainer import tokenize_dataset

    steps, batch = size["train_steps"], size["batch"]
    cfg = GeneratorTrainConfig(learning_rate=1e-4, max_steps=steps, effective_batch_size=batch,
                               per_device_train_batch_size=batch, max_length=2048, logging_steps=1,
                               checkpoint_steps=0, gradient_checkpointing=device == "cuda")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    records = [{"messages": [*initial_messages(q), {"role": "assistant", "content": good}]}
               for q, (_, good, _) in zip(_problems(steps * batch), _answers(_problems(steps * batch)),
                                          strict=True)]
    dataset, stats = tokenize_dataset(tok, records, max_length=cfg.max_length)
    before = _snapshot(model)
    trainer = SFTTrainer(model=model, args=cfg.to_sft_config(str(out / "generator-ckpt")), train_dataset=dataset,
                         processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    _training_rows(table, "generator SFT", trainer, device, f"{batch} examples", steps)
    table.add("generator SFT", "weights moved | steps/s | target tokens",
              f"{_moved(before, trainer.model)} | {steps / seconds:.2f} | {stats['target_tokens']}",
              _moved(before, trainer.model))


# -- 3. scoring ------------------------------------------------------------------------------------------------------
def check_scoring(table: Table, verifier, tok, out: Path, device: str, size: dict) -> None:
    from trainers.verifier.model import save_verifier
    from trainers.verifier.scorer import VerifierScorer

    vdir = save_verifier(verifier.to("cpu"), tok, out / "verifier", {"smoke": True})
    scorer = VerifierScorer.load(str(vdir), device=device, max_length=1024)
    answers = _answers(_problems(64))
    pairs = [(p, good if i % 2 else bad) for i, (p, good, bad) in enumerate(answers)]
    pairs = (pairs * math.ceil(size["score"] / len(pairs)))[: size["score"]]
    scorer.score(pairs[: scorer.batch_size])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    scores = scorer.score(pairs)
    _sync(device)
    seconds = time.perf_counter() - t0
    finite = all(math.isfinite(x) for x in scores)
    table.add("scoring", f"{len(pairs)} candidates, batch {scorer.batch_size}: candidates/s",
              f"{len(pairs) / seconds:.1f}", finite)
    alone = [scorer.score([p])[0] for p in pairs[:4]]
    tol = 0.05 if device == "cuda" else 1e-4  # bf16 on a GPU: another batch shape, another rounding
    same = all(abs(a - b) <= tol * max(1.0, abs(b)) for a, b in zip(alone, scores, strict=False))
    table.add("scoring", "alone == batched (padding-invariant)", same, same)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="the same code on the CPU with the tiny model")
    ap.add_argument("--json", type=Path, help="write the table here too")
    args = ap.parse_args()

    import torch
    import transformers
    import trl

    if args.cpu_dry_run:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print("no CUDA device: this smoke check needs a GPU (--cpu-dry-run runs it on the CPU)", file=sys.stderr)
        return 2
    size = SIZES[device]
    from app.tiny_model import build_tiny_model

    t_start = time.perf_counter()
    table = Table()
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    table.add("setup", "device | torch | transformers | trl",
              f"{name} | {torch.__version__} | {transformers.__version__} | {trl.__version__}")
    with tempfile.TemporaryDirectory(prefix="mucode-gpu-smoke-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        model_dir = str(build_tiny_model(out / "model", hidden_size=size["hidden_size"],
                                         num_layers=size["num_layers"], num_heads=size["num_heads"]))
        params = json.loads((Path(model_dir) / "mucode_tiny.json").read_text())["params"]
        table.add("setup", "random Llama (params, built in)", f"{params / 1e6:.1f}M, {time.perf_counter() - t0:.0f} s")
        stages = [
            ("sampling", lambda: (device == "cuda" and check_noise(table),
                                  check_sampling(table, model_dir, device, size))),
            ("generator SFT", lambda: check_generator_training(table, model_dir, out, device, size)),
            ("verifier + scoring", lambda: check_scoring(
                table, *check_verifier_training(table, model_dir, out, device, size), out, device, size)),
        ]
        for stage, fn in stages:  # one stage failing does not hide the others' numbers
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                table.add(stage, "raised", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}", False)
            table.add(stage, "stage seconds", f"{time.perf_counter() - t0:.1f}")
            if device == "cuda":
                torch.cuda.empty_cache()
    table.add("total", "seconds", f"{time.perf_counter() - t_start:.1f}", table.ok)
    print(table.render())
    if args.json:
        args.json.write_text(json.dumps({"ok": table.ok, "rows": table.as_dict()}, indent=2) + "\n")
    return 0 if table.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
