"""Benchmark loaders: MBPP (full and sanitized), HumanEval, HumanEval+ and MBPP+ from the offline data folder.

Each family has its own module that turns upstream records into ``ProblemSpec`` rows following the protocol of
DESIGN.md (shown, public and private tests, code prefix and setup code); the registry maps the CLI names to
them. The prompt template is not here: it belongs to the environment (``app.env``).
"""

from app.datasets.base import ParsedDataset, ProblemSpec, mbpp_split
from app.datasets.registry import DATASETS, file_sha256, load_dataset, parse_dataset, resolve_names

__all__ = [
    "DATASETS",
    "ParsedDataset",
    "ProblemSpec",
    "file_sha256",
    "load_dataset",
    "mbpp_split",
    "parse_dataset",
    "resolve_names",
]
