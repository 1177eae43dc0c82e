"""Sampling backends behind one interface (see ``base``): transformers (CPU/GPU) and vLLM.

Importing this package is cheap: torch, transformers and vllm load only when a backend is created.
"""

from workers.backends.base import Backend, Sample, SamplingParams, sample_seed
from workers.backends.registry import current_backend, get_backend, release

__all__ = ["Backend", "Sample", "SamplingParams", "current_backend", "get_backend", "release", "sample_seed"]
