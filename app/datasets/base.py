"""What every dataset loader shares: reading files with precise errors, MBPP splits and the suite hashes."""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.errors import DataError
from app.hashing import json_hash

# google-research mbpp/README.md: the split of the full set by task id (sanitized MBPP and MBPP+ inherit it).
MBPP_SPLITS = (("prompt", 1, 10), ("test", 11, 510), ("validation", 511, 600), ("train", 601, 974))


@dataclass
class ProblemSpec:
    """One problem as the loader builds it; ``row()`` gives the ``problems`` columns (minus ids)."""

    external_id: str
    split: str
    prompt: str
    entry_point: str | None
    reference_solution: str | None
    shown_tests: list[str]
    public_tests: list[str]
    private_tests: list[str]
    code_prefix: str = ""
    setup_code: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def suite(self, tests: list[str]) -> dict[str, Any]:
        return {
            "code_prefix": self.code_prefix,
            "setup_code": self.setup_code,
            "tests": tests,
            "entry_point": self.entry_point,
        }

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        row["public_suite_hash"] = json_hash(self.suite(self.public_tests))
        row["private_suite_hash"] = json_hash(self.suite(self.private_tests))
        # Everything that decides a verdict of either suite.
        row["suite_hash"] = json_hash(
            {
                "code_prefix": self.code_prefix,
                "setup_code": self.setup_code,
                "entry_point": self.entry_point,
                "public_tests": self.public_tests,
                "private_tests": self.private_tests,
            }
        )
        return row


@dataclass
class ParsedDataset:
    name: str
    source_path: Path
    source_sha256: str
    problems: list[ProblemSpec]


def mbpp_split(task_id: int) -> str:
    for name, lo, hi in MBPP_SPLITS:
        if lo <= task_id <= hi:
            return name
    raise ValueError(f"MBPP task id {task_id} is outside 1..974")


def lf(text: str | None) -> str:
    """MBPP code strings use CRLF; the model and the sandbox see LF."""
    return (text or "").replace("\r\n", "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """sha256 of one file's bytes; for several files, of their "name sha" lines (order as given)."""
    digests = [sha256_file(p) for p in paths]
    if len(digests) == 1:
        return digests[0]
    lines = "".join(f"{p.name} {d}\n" for p, d in zip(paths, digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def require_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise DataError(
            f"the data directory {data_dir} does not exist: set MUCODE_DATA_DIR or pass --data-dir to a "
            "folder with the benchmark files, or unset both to use the copy installed with mucode"
        )


def require_file(data_dir: Path, relative: str) -> Path:
    require_dir(data_dir)
    path = data_dir / relative
    if not path.is_file():
        raise DataError(f"dataset file {path} is missing (expected under the data directory {data_dir})")
    return path


# -- integrity: every benchmark file is checked against a SHA256SUMS before it is parsed ---------------------
CHECKSUMS_FILE = "SHA256SUMS"


def read_checksums(path: Path) -> dict[str, str]:
    """``relative path -> sha256`` from a file in ``sha256sum`` format (``HEX  path`` or ``HEX *path``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    sums: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, sep, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        hexdigits = all(c in "0123456789abcdef" for c in digest.lower())
        if not sep or not name or len(digest) != 64 or not hexdigits:
            raise DataError(f"{path}, line {lineno}: expected '<sha256>  <file>' (the output of sha256sum)")
        sums[name.removeprefix("./")] = digest.lower()
    return sums


def packaged_checksums() -> dict[str, str]:
    """The checksums of the files shipped with mucode: the upstream files, byte for byte."""
    from app.config import PACKAGED_DATA_DIR

    return read_checksums(PACKAGED_DATA_DIR / CHECKSUMS_FILE)


@dataclass(frozen=True)
class FileCheck:
    """One benchmark file against the checksum it must have."""

    relative: str  # as the loaders name it, relative to the data directory
    path: Path
    expected: str | None  # None: no SHA256SUMS lists it
    actual: str | None  # None: the file is missing
    listed_in: Path | None  # the SHA256SUMS that gave ``expected``

    @property
    def status(self) -> str:
        if self.actual is None:
            return "missing"
        if self.expected is None:
            return "unlisted"
        return "ok" if self.actual == self.expected else "mismatch"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def problem(self) -> str:
        """What is wrong, for an error message (empty when the file is fine)."""
        if self.status == "missing":
            want = f" (expected sha256 {self.expected})" if self.expected else ""
            return f"dataset file {self.path} is missing{want}"
        if self.status == "unlisted":
            return f"{self.path} is listed in no {CHECKSUMS_FILE}: actual sha256 {self.actual}"
        if self.status == "mismatch":
            return (
                f"{self.path} does not match its checksum: expected sha256 {self.expected} "
                f"(from {self.listed_in}), actual {self.actual}"
            )
        return ""


def check_files(data_dir: Path, relatives: list[str] | tuple[str, ...]) -> list[FileCheck]:
    """Recompute the sha256 of ``relatives`` under ``data_dir`` and compare.

    The expected values come from the data directory's own SHA256SUMS for the files it lists (a folder with
    another revision of a benchmark declares it there), else from the checksums of the files shipped with
    mucode, which are the upstream files.
    """
    from app.config import PACKAGED_DATA_DIR

    require_dir(data_dir)
    packaged_sums = PACKAGED_DATA_DIR / CHECKSUMS_FILE
    expected = {rel: (digest, packaged_sums) for rel, digest in packaged_checksums().items()}
    own = data_dir / CHECKSUMS_FILE
    if own.is_file():
        expected.update({rel: (digest, own) for rel, digest in read_checksums(own).items()})
    checks = []
    for rel in relatives:
        path = data_dir / rel
        want, listed_in = expected.get(rel, (None, None))
        actual = sha256_file(path) if path.is_file() else None
        checks.append(FileCheck(rel, path, want, actual, listed_in))
    return checks


def verify_files(
    data_dir: Path, relatives: list[str] | tuple[str, ...], *, allow_modified: bool = False
) -> list[FileCheck]:
    """``check_files``, raising a DataError for a missing file, and for any other difference unless allowed.

    Returns the checks (with ``allow_modified``, the caller reports the differences it let through).
    """
    from app.config import PACKAGED_DATA_DIR

    checks = check_files(data_dir, relatives)
    missing = [c for c in checks if c.status == "missing"]
    bad = missing + ([] if allow_modified else [c for c in checks if c.status in ("mismatch", "unlisted")])
    if bad:
        if len(missing) == len(bad):
            hint = ""
        elif _same_dir(data_dir, PACKAGED_DATA_DIR):
            hint = (
                "the copy installed with mucode was altered: reinstall mucode (or restore the file from the "
                "repository), or point MUCODE_DATA_DIR/--data-dir at an intact copy"
            )
        else:
            hint = (
                "restore the upstream file; to load another revision deliberately, list its sha256 in "
                f"{data_dir / CHECKSUMS_FILE} or pass --allow-modified"
            )
        raise DataError("; ".join(c.problem() for c in bad) + (f" ({hint})" if hint else ""))
    return checks


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-empty line; ``.gz`` files are read decompressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {lineno}: expected a JSON object")
                yield lineno, record
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc


def read_json_array(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(record number, record) of a JSON array file (sanitized MBPP)."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of problems")
    yield from enumerate(records, start=1)


def field_of(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """A required field of the expected type, or a DataError naming the file and line."""
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {key!r} has type {type(value).__name__}")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: field {key!r} must be a list of strings")
    return value


def parse_python(source: str, mode: str = "exec") -> ast.AST:
    """``ast.parse``, silencing the warnings of upstream code (invalid escapes like "\\d" in strings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        return ast.parse(source, mode=mode)


def called_function(code: str, tests: list[str]) -> str | None:
    """The function the tests call among those the reference code defines (MBPP has no entry point)."""
    try:
        defined = {n.name for n in ast.walk(parse_python(code)) if isinstance(n, ast.FunctionDef)}
    except SyntaxError:
        return None
    for test in tests:
        try:
            tree = parse_python(test)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
                return node.func.id
    return None
