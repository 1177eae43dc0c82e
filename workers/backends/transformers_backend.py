"""Sampling with transformers ``generate`` (CPU or GPU): batched, left-padded, reproducible per sample.

Determinism per sample. Plain sampled ``generate`` draws every row's token from one global RNG, so a response
depends on everything else in its batch. Here the sampling step is a logits processor: at step ``t`` row ``i``
takes one uniform number ``u(seed_i, t)`` from a counter-based hash (splitmix64, computed up front with numpy
for all rows and steps) and picks its token by inverse-CDF over the temperature/top-p distribution; the
processor returns a one-hot score and ``generate`` runs in greedy mode, so it takes that token. A response
thus depends only on its prompt and its seed, not on its batch neighbours or its row. The extra work per step
(a softmax, a cumulative sum and a search over the vocabulary, plus a sort when top_p < 1) is what plain
sampling does anyway (softmax + multinomial), so the cost against plain batched ``generate`` is small:
see ``bench/gpu_smoke.py`` and the numbers in ``tests/test_backends.py``.

``temperature == 0`` is greedy decoding (no processor, seeds unused).

Only torch, transformers and numpy are imported (lazily), so this module runs on a bare GPU host.
"""

from __future__ import annotations

import gc
from typing import Any

from workers.backends.base import (
    Sample,
    SamplingParams,
    eos_token_ids,
    expand_requests,
    group_samples,
    render_prompt,
)

_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_SALT = 0x6D75636F64652D31  # "mucode-1"


def _splitmix64(x):
    import numpy as np

    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
    return x ^ (x >> np.uint64(31))


def seeded_uniforms(seeds: list[int], steps: int):
    """``u[i, t]`` in (0, 1): the uniform number row ``i`` (seed ``seeds[i]``) uses at generation step ``t``.

    A pure function of (seed, step), identical on every device and platform (numpy uint64 arithmetic).
    """
    import numpy as np

    with np.errstate(over="ignore"):
        s = _splitmix64(np.asarray(seeds, dtype=np.uint64) ^ np.uint64(_SALT))[:, None]
        t = np.arange(steps, dtype=np.uint64)[None, :]
        x = _splitmix64(s + t * np.uint64(_GOLDEN))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) * (2.0**-53)


def _make_sampler(uniforms, prompt_len: int, temperature: float, top_p: float):
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        """Picks each row's next token from its own (seed, step) uniform; returns a one-hot score."""

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            step = input_ids.shape[1] - prompt_len
            u = uniforms[:, step : step + 1]  # [B, 1] float64
            logits = scores.float()
            if temperature != 1.0:
                logits = logits / temperature
            if top_p < 1.0:
                logits, order = torch.sort(logits, dim=-1, descending=True)
                probs = logits.softmax(dim=-1)
                mass_before = probs.cumsum(dim=-1) - probs
                probs = probs.masked_fill(mass_before >= top_p, 0.0)  # smallest prefix with mass >= top_p
            else:
                order = None
                probs = logits.softmax(dim=-1)
            cdf = probs.double().cumsum_(dim=-1)
            target = u * cdf[:, -1:]
            pick = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
            if order is not None:
                pick = order.gather(1, pick)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, pick, 0.0)

    return SeededSampler()


class TransformersBackend:
    """One model loaded with ``AutoModelForCausalLM``; ``generate`` as in ``workers.backends.base.Backend``."""

    kind = "transformers"

    def __init__(
        self,
        model_uri: str,
        *,
        device: str | None = None,
        dtype: str = "auto",
        max_batch_rows: int | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.model_uri = str(model_uri)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            use_bf16 = self.device.startswith("cuda") and torch.cuda.is_bf16_supported()
            torch_dtype = torch.bfloat16 if use_bf16 else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.max_batch_rows = max_batch_rows
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_uri)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForCausalLM.from_pretrained(self.model_uri, **kwargs).to(self.device).eval()
        self.eos_ids = eos_token_ids(self.tokenizer, self.model.generation_config)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.model.generation_config.pad_token_id
        if isinstance(pad, (list, tuple)):
            pad = pad[0] if pad else None
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        # A clean generation config: nothing from the checkpoint's (a repetition penalty, a default
        # temperature, top-k...) may change what the protocol's sampling parameters say.
        self.model.generation_config = GenerationConfig(
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )

    # -- prompts -------------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return render_prompt(self.tokenizer, messages)

    # -- generation ----------------------------------------------------------------------------------
    def generate(
        self, conversations: list[list[dict]], params: SamplingParams, seeds: list[int]
    ) -> list[list[Sample]]:
        rows = expand_requests(conversations, params, seeds)
        if not rows:
            return []
        prompts = [self.prompt_ids(c) for c in conversations]
        order = list(range(len(rows)))
        chunk = self.max_batch_rows or len(rows)
        if chunk < len(rows):
            # Similar lengths together: less padding. Results do not depend on the grouping.
            order.sort(key=lambda r: -len(prompts[rows[r][0]]))
        results: list[Sample | None] = [None] * len(rows)
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            samples = self._generate_rows(
                [prompts[rows[r][0]] for r in part], [rows[r][2] for r in part], params
            )
            for r, s in zip(part, samples, strict=True):
                results[r] = s
        return group_samples(results, params.n)  # type: ignore[arg-type]

    def _generate_rows(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]:
        import torch
        from transformers import LogitsProcessorList

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, width - len(p) :] = 1
        input_ids = input_ids.to(self.device)
        attention = attention.to(self.device)

        processors = LogitsProcessorList()
        if not params.greedy:
            uniforms = torch.from_numpy(seeded_uniforms(seeds, params.max_tokens)).to(self.device)
            processors.append(_make_sampler(uniforms, width, params.temperature, params.top_p))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=params.max_tokens,
                do_sample=False,
                num_beams=1,
                logits_processor=processors,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids,
            )
        generated = out[:, width:].tolist()
        eos = set(self.eos_ids)
        samples = []
        for i, tokens in enumerate(generated):
            end = next((k for k, t in enumerate(tokens) if t in eos), None)
            if end is None:
                body, count, reason = tokens, len(tokens), "length"
            else:
                body, count, reason = tokens[:end], end + 1, "stop"
            samples.append(
                Sample(
                    text=self.tokenizer.decode(body, skip_special_tokens=True),
                    prompt_tokens=len(prompts[i]),
                    completion_tokens=count,
                    finish_reason=reason,
                    seed=None if params.greedy else seeds[i],
                )
            )
        return samples

    def close(self) -> None:
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
