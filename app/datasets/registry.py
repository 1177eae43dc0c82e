"""The dataset names ``mucode data load`` accepts, and loading a parsed dataset into the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.datasets.base import FileCheck, ParsedDataset, check_files, sha256_files, verify_files
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


def parse_dataset(
    name: str, data_dir: Path | str | None = None, *, allow_modified: bool = False
) -> ParsedDataset:
    """Check and read one dataset's files; raises DataError naming the file and line of any defect.

    Each file's sha256 must match its SHA256SUMS first (``check_files``): a missing or altered file is an
    error naming it with both checksums, unless ``allow_modified`` (a deliberate other revision).
    """
    info = DATASETS[resolve_names([name])[0]]
    root = data_dir_or_default(data_dir)
    verify_files(root, info.files, allow_modified=allow_modified)
    return info.parse(root)


def _files_of(names: list[str]) -> list[str]:
    files: list[str] = []
    for name in resolve_names(names):
        files += [f for f in DATASETS[name].files if f not in files]
    return files


def check_dataset_files(names: list[str], data_dir: Path | str | None = None) -> list[FileCheck]:
    """The checksum check of every file the named datasets read (each file once, in order)."""
    return check_files(data_dir_or_default(data_dir), _files_of(names))


def verify_dataset_files(
    names: list[str], data_dir: Path | str | None = None, *, allow_modified: bool = False
) -> list[FileCheck]:
    """``check_dataset_files``, raising one DataError for every missing or (unless allowed) altered file."""
    return verify_files(data_dir_or_default(data_dir), _files_of(names), allow_modified=allow_modified)


def file_sha256(name: str, data_dir: Path | str | None = None) -> str | None:
    """The source hash a load of ``name`` would record now, or None when a file is missing."""
    root = data_dir_or_default(data_dir)
    paths = [root / f for f in DATASETS[name].files]
    return sha256_files(paths) if all(p.is_file() for p in paths) else None


def load_dataset(
    store, name: str, data_dir: Path | str | None = None, *, force: bool = False, allow_modified: bool = False
):
    """Check, parse ``name`` and write it in one transaction; returns the store's ``LoadResult``.

    The checksums are checked and the whole file parsed before anything is written, so a missing or altered
    file, or a malformed line, writes nothing.
    """
    parsed = parse_dataset(name, data_dir, allow_modified=allow_modified)
    return store.load_problems(
        parsed.name,
        source_path=str(parsed.source_path),
        source_sha256=parsed.source_sha256,
        rows=[p.row() for p in parsed.problems],
        force=force,
    )
