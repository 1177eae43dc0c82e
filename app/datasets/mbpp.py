"""MBPP (full), sanitized MBPP and MBPP+ (EvalPlus OriginFmt).

Protocol (docs/method.md §2): train problems (task ids 601-974) show and check all three asserts; every
other split shows and checks the first one. The shown tests start with the setup code, as in the reference
prompt ({TESTS} = test_setup_code + asserts). The private suite is every assert plus the challenge asserts,
which run as real statements (the reference code appended them as a list repr, so they never ran: bug B1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.datasets.base import (
    ParsedDataset,
    ProblemSpec,
    called_function,
    field_of,
    lf,
    mbpp_split,
    read_json_array,
    read_jsonl,
    require_file,
    sha256_files,
)
from app.errors import DataError

MBPP_FILE = "mbpp/mbpp.jsonl"
SANITIZED_FILE = "mbpp/sanitized-mbpp.json"
MBPP_PLUS_FILE = "evalplus/MbppPlus-OriginFmt-v0.2.0.jsonl.gz"


def mbpp_problem(
    external_id: str,
    task_id: int,
    where: str,
    *,
    prompt: str,
    code: str,
    tests: list[str],
    setup_code: str = "",
    private_tests: list[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> ProblemSpec:
    try:
        split = mbpp_split(task_id)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from exc
    if not tests:
        raise DataError(f"{where}: the problem has no tests")
    code, setup_code, tests = lf(code), lf(setup_code), [lf(t) for t in tests]
    public = tests if split == "train" else tests[:1]
    return ProblemSpec(
        external_id=external_id,
        split=split,
        prompt=prompt.strip(),
        entry_point=called_function(code, tests),
        reference_solution=code,
        shown_tests=([setup_code] if setup_code.strip() else []) + public,
        public_tests=public,
        private_tests=[lf(t) for t in private_tests] if private_tests is not None else tests,
        setup_code=setup_code,
        meta={"task_id": task_id, **(meta or {})},
    )


def _unique(seen: set[int], task_id: int, where: str) -> None:
    if task_id in seen:
        raise DataError(f"{where}: duplicate task_id {task_id}")
    seen.add(task_id)


def load_mbpp(data_dir: Path) -> ParsedDataset:
    path = require_file(data_dir, MBPP_FILE)
    problems, seen = [], set()
    for lineno, r in read_jsonl(path):
        where = f"{path}, line {lineno}"
        task_id = field_of(r, "task_id", int, where)
        _unique(seen, task_id, where)
        tests = field_of(r, "test_list", list, where)
        challenge = field_of(r, "challenge_test_list", list, where)
        problems.append(
            mbpp_problem(
                f"mbpp/{task_id}",
                task_id,
                where,
                prompt=field_of(r, "text", str, where),
                code=field_of(r, "code", str, where),
                tests=tests,
                setup_code=field_of(r, "test_setup_code", str, where),
                private_tests=tests + challenge,
                meta={"challenge_tests": len(challenge)} if challenge else None,
            )
        )
    return ParsedDataset("mbpp", path, sha256_files([path]), problems)


def _sanitized_style_problem(r: dict, prefix: str, where: str, seen: set[int], **extra) -> ProblemSpec:
    """One record of the sanitized-style files (MBPP sanitized, MBPP+): prompt, code, test_list, test_imports."""
    task_id = field_of(r, "task_id", int, where)
    _unique(seen, task_id, where)
    return mbpp_problem(
        f"{prefix}/{task_id}",
        task_id,
        where,
        prompt=field_of(r, "prompt", str, where),
        code=field_of(r, "code", str, where),
        tests=field_of(r, "test_list", list, where),
        setup_code="\n".join(field_of(r, "test_imports", list, where)),
        **extra,
    )


def load_mbpp_sanitized(data_dir: Path) -> ParsedDataset:
    path = require_file(data_dir, SANITIZED_FILE)
    problems, seen = [], set()
    for n, r in read_json_array(path):
        where = f"{path}, record {n}"
        if not isinstance(r, dict):
            raise DataError(f"{where}: expected a JSON object")
        problems.append(_sanitized_style_problem(r, "mbpp_sanitized", where, seen))
    return ParsedDataset("mbpp_sanitized", path, sha256_files([path]), problems)


def load_mbpp_plus(data_dir: Path) -> ParsedDataset:
    """MBPP+ v0.2.0 in the original format: ``test`` is a module-level loop over all base and plus inputs."""
    path = require_file(data_dir, MBPP_PLUS_FILE)
    problems, seen = [], set()
    for lineno, r in read_jsonl(path):
        where = f"{path}, line {lineno}"
        private = [field_of(r, "test", str, where)]
        problems.append(_sanitized_style_problem(r, "MbppPlus", where, seen, private_tests=private))
    return ParsedDataset("mbpp_plus", path, sha256_files([path]), problems)
