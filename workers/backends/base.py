"""The sampling interface every backend implements (no heavy imports here).

A backend takes a batch of conversations (lists of chat messages), one set of sampling parameters and one seed
per conversation, and returns ``n`` samples per conversation. Sample ``j`` of a conversation with seed ``s``
uses the seed ``sample_seed(s, j)`` (``s`` itself for ``j == 0``), so ``n = 5`` with seed ``s`` gives the same
five responses as five conversations with the seeds ``sample_seed(s, 0..4)``. On one backend the same
prompt and seed give the same response whatever else is in the batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

from app.env.chat import render_chat

FinishReason = Literal["stop", "length"]
SEED_MASK = (1 << 63) - 1  # seeds are non-negative 63-bit integers (torch and vLLM both take them)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float = 1.0
    max_tokens: int = 1000
    n: int = 1
    # End a row where its first Python code block closes (``app.env.extract``): the transformers backend stops
    # the row there; vLLM and a vLLM server sample on and the response is cut there (``cut_after_code``).
    stop_after_code: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_tokens < 1 or self.n < 1:
            raise ValueError("max_tokens and n must be positive")

    @classmethod
    def from_config(cls, config: Any, n: int = 1, *, greedy: bool = False) -> SamplingParams:
        """From the protocol's ``SamplingConfig``; ``greedy`` sets T = 0."""
        return cls(
            temperature=0.0 if greedy else float(config.temperature),
            top_p=float(config.top_p),
            max_tokens=int(config.max_new_tokens),
            n=n,
            stop_after_code=bool(config.stop_after_code),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    text: str  # the decoded response, without the end-of-turn token
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the end-of-turn token included when the response ended on it
    finish_reason: FinishReason  # "stop": ended on an end-of-turn token; "length": hit max_tokens
    seed: int | None = None  # the seed this sample used (None for greedy)


@runtime_checkable
class Backend(Protocol):
    kind: str
    model_uri: str

    def generate(
        self, conversations: list[list[dict]], params: SamplingParams, seeds: list[int]
    ) -> list[list[Sample]]:
        """``params.n`` samples per conversation, in order; ``seeds[i]`` seeds conversation ``i``."""
        ...

    def close(self) -> None:
        """Free the model (GPU memory) before another one is loaded."""
        ...


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a request seeded ``seed``: ``seed`` for the first, then a hash."""
    if seed < 0:
        raise ValueError("seeds are non-negative")
    if index == 0:
        return seed & SEED_MASK
    digest = hashlib.sha256(f"mucode-sample:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & SEED_MASK


def expand_requests(
    conversations: list[list[dict]], params: SamplingParams, seeds: list[int]
) -> list[tuple[int, int, int]]:
    """One (conversation index, sample index, seed) row per sample, in output order."""
    if len(seeds) != len(conversations):
        raise ValueError(f"{len(conversations)} conversations but {len(seeds)} seeds")
    return [(i, j, sample_seed(seeds[i], j)) for i in range(len(conversations)) for j in range(params.n)]


class CodeBlockWatch:
    """``stop_after_code``: has a row's text closed its first Python code block? Only a token holding a
    backtick can close one, so the text is decoded again only after such a token."""

    def __init__(self, tokenizer: Any) -> None:
        from app.env.extract import code_block_closed

        self.tokenizer, self.closed_text = tokenizer, code_block_closed
        self.backtick: dict[int, bool] = {}

    def closed(self, tokens: list[int]) -> bool:
        last = tokens[-1]
        if last not in self.backtick:
            self.backtick[last] = "`" in self.tokenizer.decode([last])
        return self.backtick[last] and self.closed_text(self.tokenizer.decode(tokens, skip_special_tokens=True))


def cut_after_code(tokenizer: Any, token_ids: list[int], eos_ids: list[int]) -> tuple[str, int] | None:
    """``stop_after_code`` after sampling, for an engine that cannot end a row on a parsed condition: the text
    and the token count of the response up to the token that closes its first code block (None when no block
    closes before its end). The transformers backend stops at that token, so for the same tokens both give the
    same sample; sampling a token depends only on the tokens before it, so the cut changes no kept token."""
    watch, kept, eos = CodeBlockWatch(tokenizer), [], set(eos_ids)
    for t in token_ids:
        if t in eos:
            return None
        kept.append(t)
        if watch.closed(kept):
            return tokenizer.decode(kept, skip_special_tokens=True), len(kept)
    return None


def stopped_after_code(sample: Sample, tokenizer: Any, token_ids: list[int], eos_ids: list[int]) -> Sample:
    """``sample`` cut where its first code block closes (``cut_after_code``), or as it is."""
    cut = cut_after_code(tokenizer, token_ids, eos_ids)
    if cut is None:
        return sample
    return replace(sample, text=cut[0], completion_tokens=cut[1], finish_reason="stop")


def group_samples(samples: list[Sample], n: int) -> list[list[Sample]]:
    return [samples[i : i + n] for i in range(0, len(samples), n)]


def render_prompt(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The token ids a model sees for ``messages``: the chat template with the generation prompt.

    Rendered by ``app.env.chat.render_chat``, the same function SFT and the verifier use (same pinned template
    variables, no second BOS). Both backends use this, so they see identical tokens.
    """
    return render_chat(tokenizer, messages, add_generation_prompt=True, tokenize=True).input_ids


class ChatBackend:
    """What every backend shares: prompts are its tokenizer's chat template, rendered by ``render_prompt``."""

    def sample_plan(self, conversations: list[list[dict]], params: SamplingParams,
                    seeds: list[int]) -> tuple[list[tuple[int, int, int]], list[list[int]]]:
        """The rows to sample (``expand_requests``) and each conversation's prompt token ids."""
        rows = expand_requests(conversations, params, seeds)
        return rows, [self.prompt_ids(c) for c in conversations] if rows else []

    tokenizer: Any

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return render_prompt(self.tokenizer, messages)


def eos_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every token that ends a response: the generation config's EOS ids and the tokenizer's EOS."""
    ids: list[int] = []
    gen_eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for value in (gen_eos, tokenizer.eos_token_id):
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    if not ids:
        raise ValueError("the model defines no end-of-sequence token")
    return ids
