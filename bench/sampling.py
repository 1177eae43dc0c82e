"""Benchmark: the transformers backend's sampling loop against plain ``model.generate`` on the same rows.

One run, one process, one loaded model, the same padded batch and seeds:

- **generate**: ``model.generate`` with the backend's seeded sampler as a logits processor (what the backend did
  before it had its own loop): every prompt row is prefilled, and every row is computed until the last one ends.
- **backend**: ``TransformersBackend.generate``: a prompt repeated in the batch (M rollouts of a problem at the
  first turn) is prefilled once, and a row that ended leaves the batch.

Both must give the same samples (same prompt + same seed = same tokens); the run says how many agree and
prints tokens/s of each and the ratio. ``--stop-after-code`` adds the backend with ``stop_after_code``.

    python bench/sampling.py                          # SmolLM2-135M if pulled, else the tiny model
    python bench/sampling.py --problems 8 -M 4 --max-new-tokens 160 --stop-after-code
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMOLLM = Path.home() / ".cache" / "mucode" / "models" / "smollm2-135m-instruct"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: SmolLM2-135M if pulled, else tiny)")
    p.add_argument("--problems", type=int, default=8, help="first N MBPP train problems")
    p.add_argument("-M", type=int, default=4, help="rows per problem (rollouts)")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--stop-after-code", action="store_true", help="also time the backend with stop_after_code")
    args = p.parse_args(argv)

    import torch
    from transformers import LogitsProcessorList

    from app.datasets.registry import parse_dataset
    from app.env import initial_messages
    from workers.backends.base import SamplingParams
    from workers.backends.transformers_backend import (
        TransformersBackend,
        _make_sampler,
        generated_rows,
        left_padded,
        step_keys,
    )

    model = args.model
    if model is None:
        if (SMOLLM / "config.json").is_file():
            model = str(SMOLLM)
        else:
            import tempfile

            from app.tiny_model import build_tiny_model

            model = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    be = TransformersBackend(model, device="cpu")
    problems = [q for q in parse_dataset("mbpp").problems if q.split == "train"][: args.problems]
    convs = [initial_messages(q) for q in problems for _ in range(args.M)]
    seeds = list(range(len(convs)))
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_new_tokens)
    print(f"model {model}; {len(convs)} rows ({args.problems} problems x M={args.M}), at most "
          f"{args.max_new_tokens} new tokens, temperature {args.temperature}, torch threads {torch.get_num_threads()}")

    def plain_generate() -> list[tuple[str, int]]:
        ids, mask = left_padded([be.prompt_ids(c) for c in convs], be.pad_id)
        width = ids.shape[1]
        procs = LogitsProcessorList()
        if not params.greedy:
            keys = torch.from_numpy(step_keys(seeds, params.max_tokens).view("int32"))
            procs.append(_make_sampler(keys, width, params.temperature, params.top_p))
        with torch.inference_mode():
            out = be.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=params.max_tokens,
                                    do_sample=False, logits_processor=procs, pad_token_id=be.pad_id,
                                    eos_token_id=be.eos_ids)
        return generated_rows(be, out[:, width:].tolist())

    def backend(stop: bool) -> list[tuple[str, int]]:
        ps = SamplingParams(temperature=args.temperature, max_tokens=args.max_new_tokens, stop_after_code=stop)
        return [(g[0].text, g[0].completion_tokens) for g in be.generate(convs, ps, seeds)]

    runs = [("generate", plain_generate), ("backend", lambda: backend(False))]
    if args.stop_after_code:
        runs.append(("backend + stop_after_code", lambda: backend(True)))
    results, rates = {}, {}
    for name, fn in runs:
        t0 = time.perf_counter()
        results[name] = fn()
        dt = time.perf_counter() - t0
        n = sum(c for _, c in results[name])
        rates[name] = n / dt
        print(f"{name:26s} {dt:7.1f} s  {n:6d} tokens  {n / dt:7.1f} tokens/s", flush=True)
    same = sum(a == b for a, b in zip(results["generate"], results["backend"], strict=True))
    print(f"samples identical to generate: {same}/{len(convs)}")
    print(f"ratio backend / generate: {rates['backend'] / rates['generate']:.2f}x tokens/s")
    if args.stop_after_code:
        cut = results["backend + stop_after_code"]
        prefix = sum(a.startswith(b) for (a, _), (b, _) in zip(results["backend"], cut, strict=True))
        t_gen = sum(c for _, c in results["generate"]) / rates["generate"]
        t_cut = sum(c for _, c in cut) / rates["backend + stop_after_code"]
        print(f"stop_after_code: {prefix}/{len(convs)} samples are prefixes of the full ones; "
              f"{t_gen / t_cut:.2f}x faster than generate in wall time")
    return 0 if same == len(convs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
