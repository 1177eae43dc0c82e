"""Sampling with a transformers causal LM (CPU or GPU): batched, left-padded, reproducible per sample.

Determinism per sample. Plain sampled ``generate`` draws every row's token from one global RNG, so a response
depends on everything else in its batch. Here sampling is the Gumbel-max trick with counter-based noise: at
step ``t`` row ``i`` adds to its tempered logits the Gumbel noise ``-log(-log(u))``, where
``u = hash(key(seed_i, t), token)`` (splitmix64 for the key, a 32-bit integer hash per token, computed on the
device), and takes the argmax. A response thus depends only on its prompt and its seed, not on its batch
neighbours or its row. This is vLLM's own seeded sampling in spirit (an exponential race with one generator per
request) without a Python loop over rows. ``_make_sampler`` wraps the same pick as a logits processor for
``model.generate``: the tests and ``bench/gpu_smoke.py`` check the backend's own loop against it.

Gumbel-max rather than inverse-CDF with one uniform per row: a batch of another shape can move logits by
float rounding; with Gumbel-max a different token needs two perturbed scores within that rounding of each
other, while a cumulative sum over the vocabulary lets every boundary move at once.

Cost: about twenty element-wise passes over a [rows, vocab] tensor per step, the same order as the softmax +
multinomial of plain sampling (cheaper on the CPU, where ``torch.multinomial`` is slow). On an H100 with a
1B-shaped Llama (bf16, vocabulary 128256, 64 rows x 256 tokens) it ran at 1.00x the throughput of plain sampled
``generate`` (1.05x through ``torch.compile``); ``bench/gpu_smoke.py`` measures it.

Batch independence is exact where the forward pass is (CPU float32 here: every regrouping test passes). GPU
kernels in bf16 may round a row's logits differently in a batch of another shape, and a near-tie can then
go the other way: same batch → same samples always, but on an H100 in bf16 5 of 8 rows of a random 1B model
were identical for 64 tokens alone vs in a batch of 64 (a trained model has fewer near-ties).

``temperature == 0`` is greedy decoding (argmax, seeds unused).

The decoding loop is the backend's own (``_decode``), not ``generate``: rows that repeat a prompt (M rollouts
of a problem, N candidates of a turn) read it once and copy its KV cache (``_prompt_cache``), and a row that
ended leaves the batch, so long rows no longer make every row pay. On 2 CPU cores, 32 rows of 8 MBPP prompts
with SmolLM2-135M: 1.54x ``generate``'s speed at 160 new tokens, 2.3x at 24, with the same samples
(``bench/sampling.py``). ``stop_after_code`` ends a row where its first Python code block closes.

Only torch, transformers and numpy are imported (lazily), so this module runs on a bare GPU host.
"""

from __future__ import annotations

import gc
import inspect
from typing import Any

from workers.backends.base import (
    ChatBackend,
    CodeBlockWatch,
    Sample,
    SamplingParams,
    eos_token_ids,
    group_samples,
)

_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_SALT = 0x6D75636F64652D31  # "mucode-1"
# The 32-bit token hash (Chris Wellons' "lowbias32" finalizer) and the token stride (32-bit golden ratio).
_TOKEN_STRIDE = 0x9E3779B9
_H1 = 0x7FEB352D
_H2 = 0x846CA68B


def _splitmix64(x):
    import numpy as np

    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
    return x ^ (x >> np.uint64(31))


def step_keys(seeds: list[int], steps: int):
    """``keys[i, t]``: the 32-bit key (as uint32) of row ``i`` (seed ``seeds[i]``) at generation step ``t``.

    A pure function of (seed, step), identical on every platform (numpy uint64 arithmetic).
    """
    import numpy as np

    with np.errstate(over="ignore"):
        s = _splitmix64(np.asarray(seeds, dtype=np.uint64) ^ np.uint64(_SALT))[:, None]
        t = np.arange(steps, dtype=np.uint64)[None, :]
        x = _splitmix64(s + t * np.uint64(_GOLDEN))
    return (x >> np.uint64(32)).astype(np.uint32)


def _as_int32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def token_uniforms(keys, vocab_size: int, token_offsets=None):
    """``u[i, j]`` in (0, 1) for rows with 32-bit ``keys`` (an int32 tensor [rows, 1]) and tokens 0..V-1.

    int32 arithmetic that wraps on overflow (as it does on CPU and CUDA); right shifts are masked so they act
    as logical shifts. ``tests/test_backends.py`` checks it against a pure-Python reference.
    """
    import torch

    if token_offsets is None:
        token_offsets = torch.arange(vocab_size, dtype=torch.int32, device=keys.device) * _as_int32(
            _TOKEN_STRIDE
        )
    x = keys + token_offsets
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _as_int32(_H1)
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _as_int32(_H2)
    x = x ^ ((x >> 16) & 0xFFFF)
    # 23 bits: (k + 0.5) is exact in float32, so u is never 0 or 1 (Gumbel noise stays finite, |g| < 17).
    return ((x >> 9) & 0x7FFFFF).float().add_(0.5).mul_(2.0**-23)


def token_uniform_reference(key: int, token: int) -> float:
    """Pure-Python ``token_uniforms`` for one (uint32 key, token): the specification the tensor code follows."""
    m = 0xFFFFFFFF
    x = (key + token * _TOKEN_STRIDE) & m
    x ^= x >> 16
    x = (x * _H1) & m
    x ^= x >> 15
    x = (x * _H2) & m
    x ^= x >> 16
    return ((x >> 9) + 0.5) * 2.0**-23


def seeded_pick(logits, keys, offsets, temperature: float):
    """The sampled token of each row: ``argmax(logits / T + gumbel(keys, token))`` as a [B, 1] index.

    Written as ``argmax(logits + T * gumbel)`` (same argmax, one pass fewer). Pure tensor code, so
    ``torch.compile`` can fuse it into one kernel on a GPU (see ``TransformersBackend(compile_sampler=...)``).
    """
    import torch

    u = token_uniforms(keys, 0, offsets)
    gumbel = u.log_().neg_().log_().neg_()
    return torch.add(logits, gumbel, alpha=temperature).argmax(dim=-1, keepdim=True)


_compiled_pick = None


def _pick_function(compile_sampler: bool):
    """``seeded_pick``, compiled when asked (falls back to eager if compilation is unavailable)."""
    global _compiled_pick
    if not compile_sampler:
        return seeded_pick
    if _compiled_pick is None:
        import torch

        _compiled_pick = torch.compile(seeded_pick, dynamic=True, fullgraph=True)
    return _compiled_pick


def _nucleus(logits, temperature: float, top_p: float):
    """``logits`` with every token outside the top-``top_p`` nucleus of the tempered distribution at -inf."""
    import torch

    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits / temperature, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # Keep the smallest prefix (by probability) whose mass reaches top_p.
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _make_sampler(keys, prompt_len: int, temperature: float, top_p: float, compile_sampler: bool = False):
    """A logits processor sampling row ``i`` at step ``t`` with the noise of ``keys[i, t]`` (int32 [B, T]), for
    ``model.generate`` (``bench/gpu_smoke.py`` and the tests compare the backend's own loop against it)."""
    import torch
    from transformers import LogitsProcessor

    pick = _SeededPick(compile_sampler)

    class SeededSampler(LogitsProcessor):
        """Gumbel-max over the tempered (and nucleus-filtered) logits; returns a one-hot score."""

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            step = input_ids.shape[1] - prompt_len
            chosen = pick(_nucleus(scores.float(), temperature, top_p), keys[:, step : step + 1], temperature)
            return scores.fill_(float("-inf")).scatter_(1, chosen, 0.0)

    return SeededSampler()


class _SeededPick:
    """``seeded_pick`` with the token offsets kept between steps; compiled when asked, eager if that fails."""

    def __init__(self, compile_sampler: bool = False) -> None:
        self.fn = _pick_function(compile_sampler)
        self.offsets = None

    def __call__(self, logits, keys, temperature: float):
        import torch

        if self.offsets is None:
            self.offsets = torch.arange(logits.shape[-1], dtype=torch.int32, device=logits.device) * (
                _as_int32(_TOKEN_STRIDE)
            )
        try:
            return self.fn(logits, keys, self.offsets, temperature)
        except Exception as exc:
            if self.fn is seeded_pick:
                raise
            import warnings

            warnings.warn(f"compiled sampler failed ({exc!r}); sampling in eager mode", stacklevel=1)
            self.fn = seeded_pick
            return seeded_pick(logits, keys, self.offsets, temperature)


def left_padded(prompts: list[list[int]], pad_id: int):
    """(input ids, attention mask) of a batch of prompts, padded on the left to the longest."""
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention[i, width - len(p) :] = 1
    return input_ids, attention


def generated_rows(backend: TransformersBackend, sequences: list[list[int]]) -> list[tuple[str, int]]:
    """(text, tokens counted as the backend counts them) of plain ``generate`` output rows (prompt cut off):
    what the benchmarks compare the backend's samples with."""
    eos, rows = set(backend.eos_ids), []
    for toks in sequences:
        end = next((k for k, t in enumerate(toks) if t in eos), None)
        body = toks if end is None else toks[:end]
        rows.append((backend.tokenizer.decode(body, skip_special_tokens=True), len(toks) if end is None else end + 1))
    return rows


class TransformersBackend(ChatBackend):
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
        compile_sampler: bool = False,
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
        # torch.compile fuses the sampler's element-wise passes into one kernel. Measured on an H100 (1B-shaped
        # Llama, bf16, 64 rows x 256 tokens): eager 1.00x and compiled 1.05x the throughput of plain sampled
        # generate, after a 13.5 s compile. Off by default; the CPU never needs it.
        self.compile_sampler = bool(compile_sampler)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_uri)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForCausalLM.from_pretrained(self.model_uri, **kwargs).to(self.device).eval()
        # transformers 5 calls the forward's KV cache argument ``cache`` (``past_key_values`` before)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
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

    # -- generation ----------------------------------------------------------------------------------
    def generate(self, conversations: list[list[dict]], params: SamplingParams, seeds: list[int]) -> list[list[Sample]]:
        rows, prompts = self.sample_plan(conversations, params, seeds)
        if not rows:
            return []
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

    def _generate_rows(
        self, prompts: list[list[int]], seeds: list[int], params: SamplingParams
    ) -> list[Sample]:
        import torch

        input_ids, attention = left_padded(prompts, self.pad_id)
        with torch.inference_mode():
            tokens, reasons = self._decode(input_ids.to(self.device), attention.to(self.device), seeds, params)
        return [
            Sample(
                text=self.tokenizer.decode(toks, skip_special_tokens=True),
                prompt_tokens=len(prompts[i]),
                completion_tokens=len(toks) + (reason == "eos"),  # an end-of-turn token counts as generated
                finish_reason="length" if reason == "length" else "stop",
                seed=None if params.greedy else seeds[i],
            )
            for i, (toks, reason) in enumerate(zip(tokens, reasons, strict=True))
        ]

    def _decode(self, input_ids, attention, seeds: list[int], params: SamplingParams):
        """Sample every row to its end: (tokens of each row without its end-of-turn token, why it ended:
        ``eos``, ``code`` or ``length``). A finished row leaves the batch (its cache rows too), so the rows that
        run long no longer pay for the whole batch, as ``generate`` would have them do."""
        import torch

        rows = list(range(input_ids.shape[0]))
        tokens: list[list[int]] = [[] for _ in rows]
        reasons = ["length"] * len(rows)
        eos = set(self.eos_ids)
        watch = CodeBlockWatch(self.tokenizer) if params.stop_after_code else None
        keys = pick = None
        if not params.greedy:
            keys = torch.from_numpy(step_keys(seeds, params.max_tokens).view("int32")).to(self.device)
            pick = _SeededPick(self.compile_sampler)
        cache = self._prompt_cache(input_ids, attention)
        step_ids = input_ids[:, -1:]
        mask = attention
        positions = attention.sum(-1, keepdim=True) - 1  # a left-padded row's last prompt token
        for step in range(params.max_tokens):
            logits = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                use_cache=True, **{self._cache_kwarg: cache}).logits[:, -1, :].float()
            if keys is None:
                chosen = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = _nucleus(logits, params.temperature, params.top_p)
                chosen = pick(logits, keys[:, step : step + 1], params.temperature)
            keep = []
            for j, (r, t) in enumerate(zip(rows, chosen[:, 0].tolist(), strict=True)):
                if t in eos:
                    reasons[r] = "eos"
                    continue
                tokens[r].append(t)
                if watch is not None and watch.closed(tokens[r]):
                    reasons[r] = "code"
                    continue
                keep.append(j)
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                rows = [rows[j] for j in keep]
                chosen, mask, positions = chosen[index], mask[index], positions[index]
                if keys is not None:
                    keys = keys[index]
            step_ids = chosen
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = positions + 1
        return tokens, reasons

    def _prompt_cache(self, input_ids, attention):
        """The KV cache of every prompt token but the last, computed once per distinct padded prompt and copied
        to the rows that repeat it (M rollouts of a problem, N candidates of a turn): prefill is most of the
        work on a CPU, and the first turn of a collection reads each prompt M x N times. Every call goes this
        way, duplicates or not, so a row's tokens do not depend on whether its prompt is repeated in the batch.
        The first decoding step then reads the last prompt token."""
        import torch
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # transformers 4.x
            cache = DynamicCache()
        if input_ids.shape[1] < 2:
            return cache  # a one-token prompt: nothing to prefill before the first step
        first: dict[tuple[int, ...], int] = {}
        pick, index = [], []
        for i, row in enumerate(input_ids.tolist()):
            u = first.setdefault(tuple(row), len(pick))
            if u == len(pick):
                pick.append(i)
            index.append(u)
        ids = input_ids[pick, :-1]
        mask = attention[pick, :-1]
        # the positions generate gives a left-padded prompt (attention mask cumsum, pads at 0)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                   **{self._cache_kwarg: cache})
        if len(pick) < len(index):
            cache.batch_select_indices(torch.tensor(index, device=ids.device))
        return cache

    def close(self) -> None:
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
