"""Sampling through an OpenAI-compatible server the team already runs (``vllm serve``, SGLang, a router in front
of several of them), so large models sample on a fleet while mucode keeps only a tokenizer.

Same prompt tokens as the in-process backends: the chat is rendered here with the local tokenizer by
``base.render_prompt`` (the function the transformers and vLLM backends use) and sent to ``/v1/completions`` as
token ids, so the server never applies a chat template of its own. Each sample is one request with ``n=1`` and
its own seed, ``base.sample_seed`` of the conversation's seed (as the other backends derive sample ``j``), so a
sample depends on its prompt and seed only where the engine keeps a generator per seeded request (vLLM does;
``temperature == 0`` is greedy and sends no seed).

Servers differ in what a request may hold, so the first request of a backend picks a dialect (or
``MUCODE_SERVER_DIALECT`` names it), tried in this order:

- ``vllm`` (vLLM, SGLang): token ids as the prompt, and every sampling knob pinned (``top_k=-1``, ``min_p=0``,
  ``repetition_penalty=1``, the model's end-of-turn ids as ``stop_token_ids``). Pinned because ``vllm serve``
  otherwise takes defaults from the checkpoint's ``generation_config.json`` (a Llama's top_p 0.9, say), which
  the in-process backend never applies.
- ``transformers`` (``transformers serve``): it takes only a text prompt and refuses unknown fields, so the
  rendered text goes as the prompt and the knobs go in its ``generation_config`` field. Without
  ``do_sample: true`` there it decodes greedily, whatever the temperature, for a checkpoint whose generation
  config does not ask for sampling.
- ``openai``: the plain OpenAI fields only (text prompt, temperature, top_p, max_tokens, seed).

``stop_after_code`` (vllm dialect only): the request asks for the response's token ids and the response is cut
after the token that closes its first code block (``base.cut_after_code``), as with the in-process vLLM backend.

A text prompt is tokenized by the server: every response's reported prompt token count is checked against the
local rendering, and a difference (a second BOS, say) is an error rather than samples of another prompt.

Requests run on a thread pool (``MUCODE_SERVER_CONCURRENCY``); connection errors, timeouts, 429 and 5xx are
retried with exponential backoff (``MUCODE_SERVER_MAX_RETRIES``); any other answer is an error naming the URL
and the server's own message. Only the standard library speaks HTTP here: no new dependency.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.env.chat import render_chat
from app.errors import ConfigError, MucodeError
from workers.backends.base import (
    ChatBackend,
    Sample,
    SamplingParams,
    eos_token_ids,
    expand_requests,
    group_samples,
    stopped_after_code,
)

log = logging.getLogger("mucode.backends.server")

DIALECTS = ("vllm", "transformers", "openai")
_BACKOFF_CAP_S = 30.0


class ServerError(MucodeError):
    """The sampling server answered with an error that another try would not change."""


class ServerUnavailable(MucodeError):
    """The sampling server could not be reached (or kept failing) after every retry."""


@dataclass(frozen=True)
class _Prompt:
    ids: list[int]
    text: str


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Refused(Exception):
    """A 4xx answer: the request itself is wrong for this server."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


def base_url(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1`` all name the same server."""
    url = url.strip().rstrip("/")
    url = url.removesuffix("/v1")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"MUCODE_SERVER_URL must be an http:// or https:// URL, not {url!r}")
    return url


class OpenAIServerBackend(ChatBackend):
    """``generate`` as in ``workers.backends.base.Backend``, each sample one ``/v1/completions`` request."""

    kind = "server"

    def __init__(
        self,
        model_uri: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        served_model: str | None = None,
        concurrency: int | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        dialect: str | None = None,
        backoff_s: float = 0.5,
    ) -> None:
        from transformers import AutoTokenizer, GenerationConfig

        from app.config import get_settings

        settings = get_settings()
        url = url or settings.server_url
        if not url:
            raise ConfigError(
                "the server backend needs the sampling server's URL: set MUCODE_SERVER_URL "
                "(e.g. http://gpu-host:8000, where `vllm serve MODEL` listens)"
            )
        self.url = base_url(url)
        self.model_uri = str(model_uri)
        self.api_key = api_key if api_key is not None else settings.server_api_key
        self.concurrency = int(concurrency or settings.server_concurrency)
        self.timeout_s = float(timeout_s or settings.server_timeout_s)
        self.max_retries = int(settings.server_max_retries if max_retries is None else max_retries)
        self.backoff_s = float(backoff_s)
        if self.concurrency < 1 or self.timeout_s <= 0 or self.max_retries < 0:
            raise ConfigError("server backend: concurrency >= 1, timeout > 0 and max retries >= 0 are required")
        wanted = dialect or settings.server_dialect
        if wanted not in ("auto", *DIALECTS):
            raise ConfigError(f"MUCODE_SERVER_DIALECT must be auto or one of {', '.join(DIALECTS)}, not {wanted!r}")
        # The prompt is rendered here, so only the tokenizer is needed locally, never the weights.
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_uri)
        try:
            gen_config = GenerationConfig.from_pretrained(self.model_uri)
        except (OSError, ValueError):
            gen_config = None
        self.eos_ids = eos_token_ids(self.tokenizer, gen_config)
        self._pool: ThreadPoolExecutor | None = None
        self.served_model = self._served_model(served_model or settings.server_model)
        self.dialect = wanted if wanted != "auto" else self._probe_dialect()
        log.info("sampling server %s: model %s, dialect %s, %d parallel requests",
                 self.url, self.served_model, self.dialect, self.concurrency)

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request with retries on what another try can fix; ``_Refused`` for a 4xx answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        started = time.monotonic()
        for attempt in range(self.max_retries + 1):
            try:
                return self._once(method, path, data, headers)
            except _Retryable as exc:
                if attempt == self.max_retries:
                    raise ServerUnavailable(
                        f"the sampling server at {self.url} did not answer {method} {path}: {exc} "
                        f"({attempt + 1} tries over {time.monotonic() - started:.1f} s). Is the server running "
                        "there and is MUCODE_SERVER_URL right?"
                    ) from None
                wait = min(_BACKOFF_CAP_S, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                if exc.retry_after is not None:
                    wait = max(wait, min(exc.retry_after, _BACKOFF_CAP_S))
                log.warning("sampling server %s: %s; trying again in %.1f s", self.url, exc, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> dict:
        # S310: the URL was checked to be http:// or https:// (``_base_url``)
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _detail(exc.read())
            if exc.code == 429 or exc.code >= 500:
                after = exc.headers.get("Retry-After") if exc.headers else None
                retry_after = float(after) if after and after.strip().isdigit() else None
                raise _Retryable(f"HTTP {exc.code}: {detail}", retry_after) from None
            raise _Refused(exc.code, detail) from None
        except urllib.error.URLError as exc:
            raise _Retryable(f"cannot connect ({exc.reason})") from None
        except (ConnectionError, http.client.HTTPException, TimeoutError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc or 'connection failed'}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerError(f"the sampling server at {self.url} answered {path} with something that is not "
                              f"JSON: {raw[:200]!r}") from None

    # -- set-up --------------------------------------------------------------------------------------------
    def _served_model(self, requested: str | None) -> str:
        """The name the server knows the model by: ``requested`` (MUCODE_SERVER_MODEL), else the model's uri or its
        hub name. Checked against ``/v1/models`` when the server lists them (a router may not)."""
        from app.model_registry import read_manifest

        candidates = [requested] if requested else [self.model_uri]
        manifest = read_manifest(self.model_uri) or {}
        if not requested and manifest.get("repo_id"):
            candidates.append(str(manifest["repo_id"]))
        try:
            listing = self._call("GET", "/v1/models")
        except _Refused:
            return candidates[0]  # no listing here: the first completion says whether the model is served
        served = [str(m.get("id")) for m in listing.get("data") or [] if isinstance(m, dict)]
        for name in candidates:
            if name in served:
                return name
        raise ConfigError(
            f"the sampling server at {self.url} does not serve {' or '.join(map(repr, candidates))}; it serves "
            f"{', '.join(map(repr, served)) or 'nothing'}. Set MUCODE_SERVER_MODEL to the served name of "
            f"{self.model_uri} (vllm serve's --served-model-name), or serve that model there."
        )

    def _probe_dialect(self) -> str:
        """The first dialect this server accepts a one-token request in."""
        prompt = self.prompt([{"role": "user", "content": "Say hi."}])
        probe = SamplingParams(temperature=0.0, max_tokens=1)
        refusals = []
        for dialect in DIALECTS:
            try:
                self._complete(dialect, prompt, probe, None)
                return dialect
            except _Refused as exc:
                refusals.append(f"{dialect}: {exc}")
        raise ServerError(
            f"the sampling server at {self.url} refused a completion of model {self.served_model!r} in every "
            f"dialect mucode speaks ({'; '.join(refusals)})"
        )

    # -- requests ------------------------------------------------------------------------------------------
    def _body(self, dialect: str, prompt: _Prompt, params: SamplingParams, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.served_model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": 1,
            "stream": False,
        }
        if seed is not None:
            body["seed"] = seed
        if dialect == "vllm":
            body.update(
                prompt=prompt.ids, top_k=-1, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0,
                frequency_penalty=0.0, stop_token_ids=self.eos_ids, skip_special_tokens=True,
            )  # fmt: skip
            if params.stop_after_code:
                body["return_token_ids"] = True  # to cut the response where its code block closes

            return body
        body["prompt"] = prompt.text
        if dialect == "transformers":
            # transformers serve starts from the checkpoint's generation config: sampling on, nothing else.
            body.pop("n")
            body["generation_config"] = json.dumps(
                {"do_sample": True, "top_k": 0, "min_p": None, "repetition_penalty": 1.0,
                 "eos_token_id": self.eos_ids}
            )  # fmt: skip
        return body

    def _complete(self, dialect: str, prompt: _Prompt, params: SamplingParams, seed: int | None) -> Sample:
        ids = prompt.ids
        try:
            out = self._call("POST", "/v1/completions", self._body(dialect, prompt, params, seed))
        except _Refused as exc:
            if exc.status in (401, 403):
                raise ServerError(f"the sampling server at {self.url} refused the request ({exc}): set "
                                  "MUCODE_SERVER_API_KEY to a key it accepts") from None
            if exc.status == 404 and "model" in exc.detail.lower():
                raise ConfigError(f"the sampling server at {self.url} does not serve {self.served_model!r} "
                                  f"({exc.detail}); set MUCODE_SERVER_MODEL to its served name") from None
            raise
        choices = out.get("choices") or []
        if len(choices) != 1:
            raise ServerError(f"the sampling server at {self.url} returned {len(choices)} choices for n=1")
        choice = choices[0]
        reason = choice.get("finish_reason")
        if reason not in ("stop", "length"):
            raise ServerError(f"the sampling server at {self.url} ended a request with finish_reason={reason!r}")
        text = choice.get("text") or ""
        usage = out.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is not None and int(prompt_tokens) != len(ids):
            raise ServerError(
                f"the sampling server at {self.url} read {prompt_tokens} prompt tokens where mucode rendered "
                f"{len(ids)} (dialect {dialect}): it tokenized the "
                "prompt text differently (a second BOS?), so it would not sample the same prompt. Use a server "
                "that takes token ids as the prompt (vLLM, SGLang)."
            )
        completion_tokens = usage.get("completion_tokens")
        if completion_tokens is None:  # a server without usage: the text's tokens, plus the end-of-turn token
            completion_tokens = len(self.tokenizer(text, add_special_tokens=False).input_ids) + (reason == "stop")
        sample = Sample(
            text=text,
            prompt_tokens=len(ids),
            completion_tokens=int(completion_tokens),
            finish_reason=reason,
            seed=seed,
        )
        if params.stop_after_code:
            if choice.get("token_ids") is None:
                raise ServerError(f"the sampling server at {self.url} returned no token ids (return_token_ids), "
                                  "which stop_after_code needs")
            sample = stopped_after_code(sample, self.tokenizer, choice["token_ids"], self.eos_ids)
        return sample

    def prompt(self, messages: list[dict]) -> _Prompt:
        """The rendered prompt: its token ids (``render_prompt``) and, for servers that take only text, the
        template's text those ids were tokenized from."""
        return _Prompt(self.prompt_ids(messages), render_chat(self.tokenizer, messages, add_generation_prompt=True,
                                                              tokenize=False))

    def generate(self, conversations: list[list[dict]], params: SamplingParams, seeds: list[int]) -> list[list[Sample]]:
        if params.stop_after_code and self.dialect != "vllm":
            raise ConfigError(
                f"stop_after_code needs the response's token ids to cut it where its code block closes; the "
                f"sampling server at {self.url} speaks the {self.dialect!r} dialect, which does not return them "
                "(vLLM and SGLang do)"
            )
        rows = expand_requests(conversations, params, seeds)
        if not rows:
            return []
        prompts = [self.prompt(c) for c in conversations]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="mucode-server")
        futures = [
            self._pool.submit(self._complete, self.dialect, prompts[i], params, None if params.greedy else seed)
            for i, _, seed in rows
        ]
        try:
            samples = [f.result() for f in futures]
        except _Refused as exc:
            raise ServerError(f"the sampling server at {self.url} refused a completion of "
                              f"{self.served_model!r}: {exc}") from None
        finally:
            for f in futures:
                f.cancel()  # after a failure, the requests not yet sent are not sent
        return group_samples(samples, params.n)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _detail(raw: bytes) -> str:
    """The server's own error message out of an error body (vLLM, SGLang, FastAPI and OpenAI shapes)."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        for key in ("detail", "message", "error"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value
            if value:
                return str(value)[:500]
    return text[:500]
