"""GPU smoke check: the transformers sampling backend on CUDA, timed against bare ``generate``.

Needs nothing but torch and transformers (and numpy): no vLLM, no network, no database, no pydantic. Models are
built on the spot: the tiny random Llama of ``app/tiny_model.py`` (tokenizer + chat template, for the backend
end to end) and a random Llama-3.2-1B-shaped model (vocabulary 128256, for a realistic cost of the per-row
seeded sampler against plain sampling). Run from the repository root:

    python bench/gpu_smoke.py [--rows 64] [--new-tokens 256] [--json out.json]

Checks (exit status 1 if one fails):
- the noise hash gives the same numbers on CUDA as on the CPU (so seeds mean the same on both);
- backend samples on CUDA: token counts, finish reasons, same seed → same text across calls;
- greedy backend output equals bare greedy ``generate``.
Reports (not pass/fail, they depend on the kernels): how many samples stay identical when regrouped into other
batches (bf16 and fp32), and throughput of backend vs bare generate, and of the seeded sampler vs plain
multinomial sampling on the 1B-shaped model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


DEVICE = "cuda"
# The seeded sampler through torch.compile (off in --cpu-dry-run: inductor's C++ build is slow there).
COMPILE = True


def _sync():
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, reps: int):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return min(times), times


def check_noise_cpu_vs_cuda(report: dict) -> bool:
    import torch

    from workers.backends.transformers_backend import step_keys, token_uniforms

    keys = torch.from_numpy(step_keys(list(range(16)), 4)[:, :1].view("int32"))
    cpu = token_uniforms(keys, 128256)
    gpu = token_uniforms(keys.cuda(), 128256).cpu()
    ok = bool(torch.equal(cpu, gpu))
    report["noise_cpu_equals_cuda"] = ok
    return ok


def tiny_backend_checks(
    report: dict, rows: int, new_tokens: int, reps: int, dtypes=("bfloat16", "float32")
) -> bool:
    import torch

    from app.tiny_model import build_tiny_model
    from workers.backends.base import SamplingParams, render_prompt
    from workers.backends.transformers_backend import TransformersBackend

    ok = True
    path = build_tiny_model(Path(tempfile.mkdtemp(prefix="mucode-tiny-")) / "tiny")
    convs = [
        [{"role": "user", "content": f"Write a function number {i}. " * (1 + i % 7)}] for i in range(rows)
    ]
    seeds = list(range(1000, 1000 + rows))
    params = SamplingParams(temperature=0.7, top_p=1.0, max_tokens=new_tokens)
    out: dict = {}
    for dtype in dtypes if DEVICE == "cuda" else ("float32",):
        be = TransformersBackend(str(path), device=DEVICE, dtype=dtype)
        a = be.generate(convs, params, seeds)
        b = be.generate(convs, params, seeds)
        same_call = [x[0].text for x in a] == [x[0].text for x in b]
        # Regroup: reversed order, half the batch, and each of the first 8 alone.
        half = be.generate(convs[::2][::-1], params, seeds[::2][::-1])[::-1]
        kept = sum(h[0].text == a[2 * i][0].text for i, h in enumerate(half))
        alone = sum(
            be.generate([convs[i]], params, [seeds[i]])[0][0].text == a[i][0].text
            for i in range(min(8, rows))
        )
        counts_ok = all(
            s[0].prompt_tokens == len(render_prompt(be.tokenizer, c)) and 1 <= s[0].completion_tokens <= new_tokens
            and s[0].finish_reason in ("stop", "length")
            for s, c in zip(a, convs)
        )  # fmt: skip
        ok &= same_call and counts_ok
        out[dtype] = {
            "same_seeds_same_text_across_calls": same_call,
            "token_counts_ok": counts_ok,
            "identical_when_regrouped_half_batch": f"{kept}/{len(half)}",
            "identical_when_alone": f"{alone}/{min(8, rows)}",
        }
        if dtype == ("bfloat16" if DEVICE == "cuda" else "float32"):
            # Greedy: backend == bare generate (one row, no padding).
            g = be.generate(convs[:1], SamplingParams(0.0, 1.0, 32), [0])[0][0].text
            ids = torch.tensor([render_prompt(be.tokenizer, convs[0])], device=DEVICE)
            with torch.inference_mode():
                bare = be.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False
                )
            greedy_ok = g == be.tokenizer.decode(bare[0, ids.shape[1] :], skip_special_tokens=True)
            ok &= greedy_ok
            out[dtype]["greedy_equals_bare_generate"] = greedy_ok

            # Throughput: backend.generate (render, pad, sample, decode) vs bare sampled generate on the same
            # left-padded batch, both forced to the same number of tokens.
            prompts = [render_prompt(be.tokenizer, c) for c in convs]
            width = max(map(len, prompts))
            inp = torch.full((rows, width), be.pad_id, dtype=torch.long)
            att = torch.zeros_like(inp)
            for i, p in enumerate(prompts):
                inp[i, width - len(p) :] = torch.tensor(p)
                att[i, width - len(p) :] = 1
            inp, att = inp.to(DEVICE), att.to(DEVICE)
            be.eos_ids = [be.tokenizer.pad_token_id]  # nothing stops early: equal work on both sides

            def bare_run(be=be, inp=inp, att=att):
                with torch.inference_mode():
                    be.model.generate(
                        input_ids=inp,
                        attention_mask=att,
                        max_new_tokens=new_tokens,
                        do_sample=True,
                        temperature=0.7,
                        top_p=1.0,
                        top_k=0,
                        pad_token_id=be.pad_id,
                        eos_token_id=be.eos_ids,
                    )

            def backend_run(be=be):
                be.generate(convs, params, seeds)

            t_bare, _ = _timed(bare_run, reps)
            t_backend, _ = _timed(backend_run, reps)
            out[dtype]["tok_per_s_bare_generate"] = round(rows * new_tokens / t_bare)
            out[dtype]["tok_per_s_backend"] = round(rows * new_tokens / t_backend)
            out[dtype]["backend_over_bare"] = round(t_bare / t_backend, 3)
        be.close()
    report["tiny_backend"] = out
    return ok


def sampler_cost_1b(report: dict, rows: int, new_tokens: int, reps: int, small: bool = False) -> None:
    """Seeded sampler vs plain multinomial sampling inside ``generate`` on a random Llama-3.2-1B-shaped model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

    from workers.backends.transformers_backend import _make_sampler, step_keys

    config = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, rope_theta=500000.0,
    )  # fmt: skip
    if small:  # --cpu-dry-run: the same code on a small model
        config.hidden_size, config.intermediate_size, config.num_hidden_layers = 64, 128, 1
        config.num_attention_heads, config.num_key_value_heads, config.vocab_size = 4, 2, 4096
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if DEVICE == "cuda" else torch.float32).eval()
    prompt_len = 256
    inp = torch.randint(3, config.vocab_size - 100, (rows, prompt_len), device=DEVICE)
    att = torch.ones_like(inp)
    keys = torch.from_numpy(step_keys(list(range(rows)), max(new_tokens, 64)).view("int32")).to(DEVICE)

    def plain():
        with torch.inference_mode():
            model.generate(
                input_ids=inp,
                attention_mask=att,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=True,
                temperature=0.7,
                top_p=1.0,
                top_k=0,
                pad_token_id=2,
            )

    def seeded(top_p=1.0, compiled=False):
        proc = LogitsProcessorList([_make_sampler(keys, prompt_len, 0.7, top_p, compile_sampler=compiled)])
        with torch.inference_mode():
            model.generate(
                input_ids=inp,
                attention_mask=att,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                logits_processor=proc,
                pad_token_id=2,
            )

    t = time.perf_counter()
    seeded(compiled=COMPILE)  # compile once (dynamic shapes), outside the timings
    compile_s = time.perf_counter() - t
    plain()
    seeded()
    runs: dict[str, list[float]] = {"plain": [], "seeded_eager": [], "seeded_compiled": []}
    for _ in range(reps):  # interleaved, so clock and thermal drift hit every variant alike
        for name, fn in (
            ("plain", plain),
            ("seeded_eager", seeded),
            ("seeded_compiled", lambda: seeded(compiled=COMPILE)),
        ):
            _sync()
            t = time.perf_counter()
            fn()
            _sync()
            runs[name].append(time.perf_counter() - t)
    t_top_p, _ = _timed(lambda: seeded(top_p=0.95, compiled=COMPILE), 1)

    # Regrouping on bf16: the first 8 rows alone vs in the full batch (seeded), 64 tokens.
    def gen(ids, k):
        proc = LogitsProcessorList([_make_sampler(k, prompt_len, 0.7, 1.0, compile_sampler=COMPILE)])
        with torch.inference_mode():
            return model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=64,
                min_new_tokens=64,
                do_sample=False,
                logits_processor=proc,
                pad_token_id=2,
            )

    full = gen(inp, keys)
    same = sum(
        int(torch.equal(gen(inp[i : i + 1], keys[i : i + 1])[0], full[i])) for i in range(min(8, rows))
    )
    best = {k: min(v) for k, v in runs.items()}
    report["llama1b_shape_bf16"] = {
        "rows": rows, "new_tokens": new_tokens, "prompt_len": prompt_len, "compile_s": round(compile_s, 1),
        "seconds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "tok_per_s": {k: round(rows * new_tokens / v) for k, v in best.items()},
        "eager_over_plain": round(best["plain"] / best["seeded_eager"], 3),
        "compiled_over_plain": round(best["plain"] / best["seeded_compiled"], 3),
        "compiled_top_p_0.95_over_plain": round(best["plain"] / t_top_p, 3),
        "rows_identical_alone_vs_batched_64_tokens": f"{same}/{min(8, rows)}",
    }  # fmt: skip
    model.to("cpu")  # free the GPU for whatever runs next
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-1b", action="store_true", help="only the tiny-model checks")
    ap.add_argument("--skip-fp32", action="store_true", help="tiny-model checks in bf16 only")
    ap.add_argument("--json", type=Path, help="write the report here too")
    ap.add_argument("--cpu-dry-run", action="store_true", help="run the tiny-model part on the CPU (no GPU)")
    args = ap.parse_args()

    import torch
    import transformers

    global DEVICE, COMPILE
    if args.cpu_dry_run:
        DEVICE, COMPILE = "cpu", False
    elif not torch.cuda.is_available():
        print(
            "no CUDA device: this smoke check needs a GPU (--cpu-dry-run runs the tiny part on the CPU)",
            file=sys.stderr,
        )
        return 2
    report: dict = {
        "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
    }  # fmt: skip

    def save() -> None:  # after every stage, so a run cut short still leaves its numbers
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    ok = check_noise_cpu_vs_cuda(report) if DEVICE == "cuda" else True
    save()
    dtypes = ("bfloat16",) if args.skip_fp32 else ("bfloat16", "float32")
    ok &= tiny_backend_checks(report, args.rows, min(args.new_tokens, 128), args.reps, dtypes)
    save()
    if not args.skip_1b:
        sampler_cost_1b(report, args.rows, args.new_tokens, args.reps, small=DEVICE != "cuda")
    report["ok"] = bool(ok)
    save()
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
