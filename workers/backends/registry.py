"""One loaded model per process: ``get_backend(kind, model_uri)`` loads it once and keeps it.

A sampling worker calls ``get_backend`` for every job; the model stays loaded between jobs and is replaced
(the old one freed first) only when a job names another model or another backend kind.
"""

from __future__ import annotations

import threading
from typing import Any

from workers.backends.base import Backend

KINDS = ("transformers", "vllm", "server")

_lock = threading.Lock()
_current: tuple[tuple[Any, ...], Backend] | None = None
loads = 0  # how many models this process has loaded (tests and logs read it)


def _key(kind: str, uri: str, kw: dict[str, Any]) -> tuple[Any, ...]:
    return (kind, uri, tuple(sorted((k, repr(v)) for k, v in kw.items())))


def load_backend(kind: str, model_uri: str, **kw: Any) -> Backend:
    """A new backend for ``model_uri`` (already resolved), not cached."""
    if kind == "transformers":
        from workers.backends.transformers_backend import TransformersBackend

        return TransformersBackend(model_uri, **kw)
    if kind == "vllm":
        from workers.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model_uri, **kw)
    if kind == "server":
        from workers.backends.openai_server import OpenAIServerBackend

        return OpenAIServerBackend(model_uri, **kw)
    raise ValueError(f"unknown backend {kind!r} (expected one of {', '.join(KINDS)})")


def get_backend(kind: str, model_uri: str, **kw: Any) -> Backend:
    """The process's backend for (kind, model): the loaded one when it matches, else a fresh load.

    ``model_uri`` is any model argument (hub name, local folder, pulled name): it is resolved first, and a
    missing model raises ``app.errors.NotFound`` with a clear message before anything is loaded.
    """
    global _current, loads
    from app.model_registry import resolve_model

    if kind not in KINDS:
        raise ValueError(f"unknown backend {kind!r} (expected one of {', '.join(KINDS)})")
    uri = resolve_model(model_uri)
    key = _key(kind, uri, kw)
    with _lock:
        if _current is not None and _current[0] == key:
            return _current[1]
        release()
        backend = _load_or_explain(kind, uri, model_uri, kw)
        _current = (key, backend)
        loads += 1
        return backend


def _load_or_explain(kind: str, uri: str, arg: str, kw: dict[str, Any]) -> Backend:
    from app.errors import NotFound

    try:
        return load_backend(kind, uri, **kw)
    except OSError as exc:
        if uri == arg and "/" in uri and not uri.startswith("/"):
            raise NotFound(
                f"could not load {uri!r}: it is neither a local folder nor a pulled model, and the model hub "
                f"could not provide it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
        raise


def current_backend() -> Backend | None:
    return _current[1] if _current is not None else None


def release() -> None:
    """Free the loaded model (if any) and return its memory to the OS (``workers.memory.trim``)."""
    global _current
    from workers.memory import trim

    if _current is not None:
        backend = _current[1]
        _current = None
        backend.close()
        del backend
        trim()
