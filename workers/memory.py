"""What a process keeps loaded between jobs, and letting go of it before a step that does not use it.

A worker process keeps two models between jobs: the sampler's (``workers.collect.load_backend``) and the
scorer's (``workers.tasks.score``). On a cluster each sits in the worker that serves its queue; in embedded
mode (no broker) one process runs every step of a round, and without releasing them the trainer would hold
its optimizer state next to both. ``release_for_step(step)`` drops, before each step of a round, the models
that step does not use:

- ``collect``: the scorer (rollouts for training are not scored while they are collected);
- ``score_old`` / ``score_new``: the sampler;
- ``train_verifier`` / ``train_generator``: the sampler and the scorer;
- ``relabel`` and ``evaluate``: nothing (an evaluation samples and scores in turn), only the trainers' garbage.

Each cache has its own ``release_models()``; ``trim()`` returns freed memory to the operating system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger("mucode.memory")

_DROPS: dict[str, tuple[str, ...]] = {
    "collect": ("scorer",),
    "score_old": ("sampler",),
    "score_new": ("sampler",),
    "train_verifier": ("sampler", "scorer"),
    "train_generator": ("sampler", "scorer"),
    "relabel": (),
    "evaluate": (),
}


def trim() -> None:
    """Collect garbage and hand the freed heap back to the OS.

    glibc keeps freed blocks in its arenas (torch's CPU tensors are plain mallocs), so a process that trained
    a model would go on holding gigabytes it no longer uses; ``malloc_trim(0)`` returns them. Elsewhere
    (macOS, musl) only the garbage collection runs.
    """
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    trim_fn = _malloc_trim()
    if trim_fn is not None:
        trim_fn(0)


_TRIM: list = []


def _malloc_trim():
    if not _TRIM:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            except (OSError, AttributeError):  # not glibc
                fn = None
        _TRIM.append(fn)
    return _TRIM[0]


def release_for_step(step: str) -> tuple[str, ...]:
    """Release the cached models that ``step`` (a round step) does not use, then ``trim()``; returns the
    caches dropped. An unknown step releases nothing and only trims."""
    drops = _DROPS.get(step, ())
    if "sampler" in drops:
        from workers.tasks.sample import release_models

        release_models()
    if "scorer" in drops:
        from workers.tasks.score import release_models

        release_models()
    if not drops:  # each release_models() trims already
        trim()
    log.debug("before %s: released %s", step, ", ".join(drops) or "nothing")
    return drops
