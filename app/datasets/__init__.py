"""Benchmark loaders: MBPP (full and sanitized), HumanEval, HumanEval+ and MBPP+ from the offline data folder.

The files ship with the package (app/data/benchmarks). Each family has its own module that turns upstream
records into ``ProblemSpec`` rows following the protocol of docs/method.md (shown, public and private tests,
code prefix and setup code); the registry maps the CLI names to them and checks every file's sha256 before
parsing it. The prompt template is not here: it belongs to the environment (``app.env``).
"""

from app.datasets.base import ParsedDataset, ProblemSpec, mbpp_split
from app.datasets.registry import (
    DATASETS,
    check_dataset_files,
    file_sha256,
    load_dataset,
    parse_dataset,
    resolve_names,
)

__all__ = [
    "DATASETS",
    "ParsedDataset",
    "ProblemSpec",
    "check_dataset_files",
    "file_sha256",
    "load_dataset",
    "mbpp_split",
    "parse_dataset",
    "resolve_names",
]
