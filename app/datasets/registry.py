"""The dataset names ``mucode data load`` accepts, and loading a parsed dataset into the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.datasets.base import ParsedDataset, sha256_files
from app.datasets.humaneval import HUMANEVAL_FILE, HUMANEVAL_PLUS_FILE, load_humaneval, load_humaneval_plus
from app.datasets.mbpp import (
    MBPP_FILE,
    MBPP_PLUS_FILE,
    SANITIZED_FILE,
    load_mbpp,
    load_mbpp_plus,
    load_mbpp_sanitized,
)
from app.errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    files: tuple[str, ...]  # relative to the data directory; source_sha256 covers them in this order
    description: str
    parse: Callable[[Path], ParsedDataset]


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("mbpp", (MBPP_FILE,), "MBPP full, 974 problems, split by task id", load_mbpp),
        DatasetInfo(
            "mbpp_sanitized",
            (SANITIZED_FILE,),
            "MBPP sanitized, 427 hand-verified problems",
            load_mbpp_sanitized,
        ),
        DatasetInfo("humaneval", (HUMANEVAL_FILE,), "HumanEval, 164 problems (test)", load_humaneval),
        DatasetInfo(
            "humaneval_plus",
            (HUMANEVAL_PLUS_FILE, HUMANEVAL_FILE),
            "HumanEval+ v0.1.10, 164 problems: plus tests private",
            load_humaneval_plus,
        ),
        DatasetInfo(
            "mbpp_plus", (MBPP_PLUS_FILE,), "MBPP+ v0.2.0, 378 problems: plus tests private", load_mbpp_plus
        ),
    )
}


def resolve_names(names: list[str]) -> list[str]:
    """Validate dataset names (``all`` = every dataset), keeping the order given."""
    if not names:
        raise DataError(f"name at least one dataset: {', '.join(DATASETS)} (or all)")
    out: list[str] = []
    for name in names:
        for n in DATASETS if name == "all" else [name]:
            if n not in DATASETS:
                raise DataError(f"unknown dataset {n!r}; known: {', '.join(DATASETS)} (or all)")
            if n not in out:
                out.append(n)
    return out


def data_dir_or_default(data_dir: Path | str | None) -> Path:
    if data_dir is None:
        from app.config import get_settings

        data_dir = get_settings().data_dir
    return Path(data_dir).expanduser()


def parse_dataset(name: str, data_dir: Path | str | None = None) -> ParsedDataset:
    """Read and convert one dataset file; raises DataError naming the file and line of any defect."""
    return DATASETS[resolve_names([name])[0]].parse(data_dir_or_default(data_dir))


def file_sha256(name: str, data_dir: Path | str | None = None) -> str | None:
    """The source hash a load of ``name`` would record now, or None when a file is missing."""
    root = data_dir_or_default(data_dir)
    paths = [root / f for f in DATASETS[name].files]
    return sha256_files(paths) if all(p.is_file() for p in paths) else None


def load_dataset(store, name: str, data_dir: Path | str | None = None, *, force: bool = False):
    """Parse ``name`` and write it in one transaction; returns the store's ``LoadResult``.

    The whole file is parsed before anything is written, so a malformed line writes nothing.
    """
    parsed = parse_dataset(name, data_dir)
    return store.load_problems(
        parsed.name,
        source_path=str(parsed.source_path),
        source_sha256=parsed.source_sha256,
        rows=[p.row() for p in parsed.problems],
        force=force,
    )
