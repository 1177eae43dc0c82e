"""The harness: how a problem's tests are run and shown around a program, beyond the problem row itself.

Two settings of an experiment decide it (``ExperimentConfig.harness.import_prelude`` and
``rollout.train_shown_tests``), and every collection freezes them in its spec:

- ``import_prelude``: the reference's 16 import lines run before every program (``app.sandbox.prelude``).
- ``shown_tests``: ``"all"`` shows and checks every public test of a problem (MBPP train: its 3 asserts, as the
  reference does); ``"first"`` shows and checks only the first, as on the MBPP test split. Problems with one
  public test (every test split, HumanEval) are the same either way.

Both can change a verdict for the same program and problem, so both are part of the execution cache's key: the
stored ``sandbox_version`` is the sandbox's version plus the harness tag (``mucode-sandbox-3+prelude``). The
legacy harness (no prelude, all tests) has no tag, so executions stored before the harness existed are reused
only by experiments frozen before it (they keep the legacy harness), never by a run with the prelude.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

SHOWN_TESTS = ("all", "first")
VERSION_MAX_CHARS = 32  # executions.sandbox_version


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def first_test_only(shown: list[str], public: list[str]) -> tuple[list[str], list[str]]:
    """(shown, public) with only the first public test: the public tests after the first leave both lists (the
    shown tests keep what precedes them, e.g. MBPP's setup code)."""
    if len(public) <= 1:
        return list(shown), list(public)
    extra = public[1:]
    if len(shown) >= len(extra) and shown[len(shown) - len(extra):] == extra:
        return shown[: len(shown) - len(extra)], public[:1]
    return [t for t in shown if t not in extra or t == public[0]], public[:1]


@dataclass(frozen=True)
class ProblemView:
    """A problem as one harness shows and checks it (anything the prompt and the sandbox read)."""

    id: int | None
    external_id: str | None
    prompt: str | None
    entry_point: str | None
    code_prefix: str
    setup_code: str
    shown_tests: list[str]
    public_tests: list[str]
    private_tests: list[str]
    public_suite_hash: str | None
    private_suite_hash: str | None

    def suite_hash(self, kind: str) -> str | None:
        return self.public_suite_hash if kind == "public" else self.private_suite_hash


@dataclass(frozen=True)
class Harness:
    import_prelude: bool = True
    shown_tests: Literal["all", "first"] = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.import_prelude, bool):
            raise TypeError(f"import_prelude must be true or false, not {self.import_prelude!r}")
        if self.shown_tests not in SHOWN_TESTS:
            raise ValueError(f"shown_tests must be one of {SHOWN_TESTS}, not {self.shown_tests!r}")

    @classmethod
    def legacy(cls) -> Harness:
        """What mucode did before the harness settings existed: no prelude, every public test."""
        return cls(import_prelude=False, shown_tests="all")

    @classmethod
    def of(cls, value: Harness | Mapping[str, Any] | None) -> Harness:
        """A Harness from itself, a dict (``as_dict``) or None (the default: the reference's protocol)."""
        if value is None:
            return cls()
        if isinstance(value, Harness):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"import_prelude", "shown_tests"}
            if unknown:
                raise ValueError(f"unknown harness settings: {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"a harness is a Harness or a dict, not {type(value).__name__}")

    def as_dict(self) -> dict[str, Any]:
        return {"import_prelude": self.import_prelude, "shown_tests": self.shown_tests}

    @property
    def tag(self) -> str:
        """What this harness adds to the sandbox version ("" for the legacy harness)."""
        parts = (["prelude"] if self.import_prelude else []) + (["first"] if self.shown_tests == "first" else [])
        return "+".join(parts)

    def sandbox_version(self, base: str | None = None) -> str:
        """The ``executions.sandbox_version`` of verdicts made with this harness."""
        if base is None:
            from app.sandbox.types import SANDBOX_VERSION

            base = SANDBOX_VERSION
        version = f"{base}+{self.tag}" if self.tag else base
        if len(version) > VERSION_MAX_CHARS:
            raise ValueError(f"sandbox version {version!r} is longer than {VERSION_MAX_CHARS} characters")
        return version

    def view(self, problem: Any) -> Any:
        """The problem as this harness shows and checks it: the problem itself when nothing changes, else a
        ``ProblemView`` with only the first public test shown and checked."""
        public = list(_get(problem, "public_tests") or [])
        if self.shown_tests == "all" or len(public) <= 1:
            return problem
        shown, public = first_test_only(list(_get(problem, "shown_tests") or []), public)
        return ProblemView(
            id=_get(problem, "id"),
            external_id=_get(problem, "external_id"),
            prompt=_get(problem, "prompt"),
            entry_point=_get(problem, "entry_point"),
            code_prefix=_get(problem, "code_prefix") or "",
            setup_code=_get(problem, "setup_code") or "",
            shown_tests=shown,
            public_tests=public,
            private_tests=list(_get(problem, "private_tests") or []),
            public_suite_hash=_get(problem, "public_suite_hash"),
            private_suite_hash=_get(problem, "private_suite_hash"),
        )
