"""The sandbox's public data types: limits, the result of one execution, protection checks, errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from app.errors import MucodeError

# Stored in executions.sandbox_version: bump it whenever a verdict could change for the same program and suite
# (harness semantics, the default limits, the plain-data rules), so the cache never mixes the two.
# 2: NumPy is preloaded only for programs that name it; a test loop's calls are sent ahead of it.
# 3: the tests see only the program globals they read, never one named like a builtin or a name of the suite;
#    caps on what a program's results may make the judge hold; the snapshot of globals never decides a verdict;
#    a system call filter (EPERM for namespaces, keyrings, mounts...); a kill by the slot's cgroup is `memory`.
SANDBOX_VERSION = "mucode-sandbox-3"

STATUSES = ("passed", "failed", "error", "timeout", "memory", "output_limit", "sandbox_error")
OUTCOMES = ("pass", "fail", "error")
SUITE_KINDS = ("public", "private")


class SandboxError(MucodeError):
    """Base class of the sandbox's errors."""


class InfraError(SandboxError):
    """The sandbox itself failed (executor died, could not fork...): retry; never a verdict on the code."""


class SandboxUnavailable(SandboxError):
    """A protection is missing on this host and weak isolation was not allowed."""


@dataclass(frozen=True)
class Limits:
    """Per program and suite. Part of the verdict: the defaults are covered by SANDBOX_VERSION."""

    timeout_s: float = 10.0  # wall clock for loading the program and running all the suite's tests
    memory_mb: int = 2048  # address space the program may add to the interpreter's (RLIMIT_AS)
    # Address space each judge may add to the zygote's (RLIMIT_AS): the tests themselves run there (MBPP+/255's
    # reference function builds 1.2 GB).
    judge_memory_mb: int = 2048
    nproc: int = 32  # processes and threads of the program's uid (RLIMIT_NPROC; fork bombs)
    output_bytes: int = 4 << 20  # stdout, stderr and any file it writes (RLIMIT_FSIZE): beyond it, output_limit
    nofile: int = 64  # open file descriptors
    tmp_mb: int = 64  # its private /tmp (the working directory)
    capture_chars: int = 2000  # stdout and stderr kept in the result

    @property
    def cpu_s(self) -> int:
        return int(self.timeout_s) + 1


@dataclass
class ExecutionResult:
    """One program on one test suite; maps 1:1 onto ``app.db.models.Execution``."""

    status: str
    passed: bool
    tests: list[dict[str, Any]] = field(default_factory=list)  # [{"test", "outcome", "message"}]
    feedback: str = ""
    stdout: str = ""
    stderr: str = ""
    duration_ms: float = 0.0

    def row(self, *, code_hash: str, suite_hash: str, suite_kind: str, sandbox_version: str = SANDBOX_VERSION
            ) -> dict[str, Any]:
        """The ``executions`` row for this result."""
        return {
            "code_hash": code_hash,
            "suite_hash": suite_hash,
            "suite_kind": suite_kind,
            "sandbox_version": sandbox_version,
            **asdict(self),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExecutionResult:
        return cls(**{k: d[k] for k in ("status", "passed", "tests", "feedback", "stdout", "stderr",
                                        "duration_ms") if k in d})

    @classmethod
    def infra_error(cls, message: str, tests: list[str] | None = None) -> ExecutionResult:
        return cls(
            status="sandbox_error",
            passed=False,
            tests=[{"test": t, "outcome": "error", "message": "sandbox error"} for t in tests or []],
            feedback=f"sandbox error: {message}",
        )


@dataclass(frozen=True)
class Check:
    """One protection, as probed: did it hold on this host, and what was seen."""

    name: str
    ok: bool
    detail: str = ""
    required: bool = True
