"""The caller's side: ``Sandbox`` starts the executor process and sends it batches; ``run_suite`` for one."""

from __future__ import annotations

import atexit
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Self

from app.sandbox import wire
from app.sandbox.prelude import names_numpy, prelude_for
from app.sandbox.types import (
    SUITE_KINDS,
    Check,
    ExecutionResult,
    InfraError,
    Limits,
    SandboxUnavailable,
)

log = logging.getLogger("mucode.sandbox")

START_TIMEOUT_S = 180.0
# The executor's first statement: no transparent huge pages in it and its forks (set before its heap grows).
# With THP, every copy-on-write fault of a forked program could copy 2 MiB instead of 4 KiB.
_LAUNCH = ("import ctypes, sys\n"
           "try:\n    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE\nexcept Exception:\n    pass\n"
           "from app.sandbox.executor import main\nmain(sys.argv[1:])\n")
CHUNK = 1024  # programs per request to the executor
_ROOT = str(Path(__file__).resolve().parents[2])


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def suite_of(problem_like: Any, kind: str, *, prelude: bool = False, code: str = "") -> dict[str, Any]:
    """The parts of a problem one suite needs: code prefix, setup code and the suite's test statements.

    ``prelude``: the reference's import lines (``app.sandbox.prelude``) run first, before the problem's own
    prefix, as trusted code in the program's process and in the judge; their NumPy lines only when ``code`` or
    the suite names NumPy."""
    if kind not in SUITE_KINDS:
        raise ValueError(f"suite kind must be one of {SUITE_KINDS}, not {kind!r}")
    tests = [str(t) for t in _get(problem_like, "public_tests" if kind == "public" else "private_tests") or []]
    prefix = _get(problem_like, "code_prefix") or ""
    setup = _get(problem_like, "setup_code") or ""
    if prelude:
        prefix = prelude_for(code, prefix, setup, tests) + prefix
    # entry_point: the program's function the tests call, the one program global that may be named like a
    # builtin in the tests' namespace (MBPP's ``sum``).
    return {"prefix": prefix, "setup": setup, "tests": tests, "entry_point": _get(problem_like, "entry_point")}


def executor_env() -> dict[str, str]:
    """The executor's whole environment: nothing from ours (no MUCODE_*, no credentials), a fixed hash seed
    (set and dict-of-str orders, hence verdicts, repeat exactly), single-threaded numeric libraries."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": _ROOT,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
    }


class Sandbox:
    """A long-lived executor. ``with Sandbox() as sb: sb.run_many([(problem, code, "public"), ...])``.

    ``workers``: programs run in parallel (default: the ``sandbox_workers`` setting, 0 = CPUs).
    ``allow_weak_isolation``: start even when a protection is missing (default: the setting); otherwise
    ``start()`` raises :class:`SandboxUnavailable` naming what is missing.
    ``send_ahead``: a test loop's calls of the program go out ahead of the loop (``prefetch.map_loops``); off,
    each call waits for the previous answer (the baseline of ``bench/sandbox_loops.py``, and a check when in
    doubt).
    """

    def __init__(self, workers: int | None = None, *, limits: Limits | None = None,
                 allow_weak_isolation: bool | None = None, pretend_missing: Sequence[str] = (),
                 preimport_numpy: bool = True, send_ahead: bool = True, measure_without: Sequence[str] = ()
                 ) -> None:
        self.workers = workers
        self.limits = limits or Limits()
        self.allow_weak_isolation = allow_weak_isolation
        self.pretend_missing = list(pretend_missing)  # tests: act as on a host without these protections
        self.preimport_numpy = preimport_numpy
        self.send_ahead = send_ahead
        # Benchmarks only: protections to leave out ("seccomp") to measure what they cost; never for verdicts.
        self.measure_without = list(measure_without)
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()

    # -- life cycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def weak(self) -> bool:
        return not self.info.get("strong", False)

    def _resolve(self) -> tuple[int, bool]:
        workers, allow = self.workers, self.allow_weak_isolation
        if workers is None or allow is None:
            from app.config import get_settings

            settings = get_settings()
            if workers is None:
                workers = settings.sandbox_workers
            if allow is None:
                allow = settings.allow_weak_isolation
        if not workers:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return int(workers), bool(allow)

    def start(self) -> Self:
        with self._lock:
            if self.running:
                return self
            workers, allow = self._resolve()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            cmd = [sys.executable, "-s", "-c", _LAUNCH, "--fd", str(theirs.fileno()),
                   "--workers", str(workers), "--limits", json.dumps(asdict(self.limits))]
            if allow:
                cmd.append("--allow-weak")
            for name in self.pretend_missing:
                cmd += ["--pretend-missing", name]
            if not self.preimport_numpy:
                cmd.append("--no-numpy")
            if not self.send_ahead:
                cmd.append("--no-send-ahead")
            for name in self.measure_without:
                cmd += ["--measure-without", name]
            try:
                proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], env=executor_env(), cwd="/",
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        start_new_session=True, close_fds=True)
            finally:
                theirs.close()
            try:
                status, info = pickle.loads(wire.recv_frame(ours.fileno(), time.monotonic() + START_TIMEOUT_S))  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire
            except (wire.WireError, OSError, EOFError, pickle.PickleError) as exc:
                proc.kill()
                proc.wait()
                ours.close()
                raise InfraError(f"the sandbox executor did not start: {exc}") from exc
            if status != "ready":
                ours.close()
                proc.wait(timeout=30)
                if status == "refused":
                    raise SandboxUnavailable(
                        "the sandbox cannot isolate programs on this host; missing: "
                        + "; ".join(info.get("missing", []))
                        + ". Run as root on Linux with namespaces, or set MUCODE_ALLOW_WEAK_ISOLATION=1 to run "
                        "untrusted code with weaker protection."
                    )
                raise InfraError(f"the sandbox executor failed to start: {info}")
            self._proc, self._sock, self.info = proc, ours, info
            if not info.get("strong"):
                log.warning("sandbox running with WEAK isolation (allowed by setting); missing: %s",
                            "; ".join(info.get("missing", [])))
            return self

    def close(self) -> None:
        with self._lock:
            proc, sock = self._proc, self._sock
            self._proc = self._sock = None
            if sock is not None:
                try:
                    wire.send_frame(sock.fileno(), pickle.dumps(("shutdown",)))
                    wire.recv_frame(sock.fileno(), time.monotonic() + 10)
                except (OSError, wire.WireError):
                    pass
                sock.close()
            if proc is not None:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # -- running ------------------------------------------------------------------------------------------
    def _request(self, msg: Any, timeout: float) -> Any:
        assert self._sock is not None
        fd = self._sock.fileno()
        wire.send_frame(fd, pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        return pickle.loads(wire.recv_frame(fd, time.monotonic() + timeout))  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire

    def run_raw(self, items: Sequence[tuple[Any, str, str]], *, collect: bool = False,
                prelude: bool = False) -> list[dict[str, Any]]:
        """The executor's result dicts for (problem_like, code, kind) items; identical items run once.
        ``prelude``: run the reference's import prelude before each program (see ``suite_of``)."""
        suites: list[dict[str, Any]] = []
        suite_ix: dict[Any, int] = {}
        by_obj: dict[tuple[int, str, bool], int] = {}
        jobs: list[dict[str, Any]] = []
        job_ix: dict[tuple[int, str], int] = {}
        order: list[int] = []
        for problem_like, code, kind in items:
            # With the prelude, a problem has two suites: with its NumPy lines (the program names NumPy) or not.
            key_obj = (id(problem_like), kind, prelude and names_numpy(code))
            si = by_obj.get(key_obj)
            if si is None:
                suite = suite_of(problem_like, kind, prelude=prelude, code=code)
                skey = (suite["prefix"], suite["setup"], tuple(suite["tests"]), suite["entry_point"])
                si = suite_ix.get(skey)
                if si is None:
                    si = suite_ix[skey] = len(suites)
                    suites.append(suite)
                by_obj[key_obj] = si
            jkey = (si, code)
            ji = job_ix.get(jkey)
            if ji is None:
                ji = job_ix[jkey] = len(jobs)
                jobs.append({"suite": si, "code": str(code), "collect": collect})
            order.append(ji)
        raw: list[dict[str, Any]] = []
        with self._lock:
            for start in range(0, len(jobs), CHUNK):
                chunk = jobs[start:start + CHUNK]
                raw.extend(self._run_chunk(suites, chunk))
        return [raw[j] for j in order]

    def _run_chunk(self, suites: list[dict[str, Any]], chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        used = sorted({j["suite"] for j in chunk})
        remap = {s: i for i, s in enumerate(used)}
        sub_suites = [suites[s] for s in used]
        sub_jobs = [{**j, "suite": remap[j["suite"]]} for j in chunk]
        if not self.running:
            self.start()
        # Generous: every program may take its whole time limit, spread over the slots.
        budget = 120.0 + (self.limits.timeout_s + 10.0) * (len(chunk) / max(1, self.info.get("slots", 1)) + 1)
        try:
            status, payload = self._request(("run", sub_suites, sub_jobs), budget)
        except (OSError, wire.WireError, EOFError, pickle.PickleError) as exc:
            self._abort()
            return [{"status": "sandbox_error", "error": f"the sandbox executor failed: {exc}"}] * len(chunk)
        if status != "results":  # the executor is in a bad state: start a fresh one next time
            self._abort()
            return [{"status": "sandbox_error", "error": str(payload)[-2000:]}] * len(chunk)
        return payload

    def _abort(self) -> None:
        proc, sock = self._proc, self._sock
        self._proc = self._sock = None
        if sock is not None:
            sock.close()
        if proc is not None:
            try:
                os.killpg(proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()

    def run_many(self, items: Iterable[tuple[Any, str, str]], *, prelude: bool = False) -> list[ExecutionResult]:
        """Run each (problem_like, code, kind) — kind "public" or "private" — and return one result each, in
        order. A result with status ``sandbox_error`` is an infrastructure failure, never a verdict.
        ``prelude``: the reference's import lines run before each program (``app.sandbox.prelude``); the
        experiment's ``harness.import_prelude`` decides it for collected candidates."""
        items = list(items)
        if not items:
            return []
        out = []
        for r in self.run_raw(items, prelude=prelude):
            if r.get("status") == "sandbox_error":
                out.append(ExecutionResult.infra_error(r.get("error", "unknown")))
            else:
                out.append(ExecutionResult.from_dict(r))
        return out

    def run(self, problem_like: Any, code: str, kind: str = "public", *, prelude: bool = False) -> ExecutionResult:
        return self.run_many([(problem_like, code, kind)], prelude=prelude)[0]

    def protections(self) -> list[Check]:
        """What the executor found at start-up (static; ``probe_protections`` tries each one for real)."""
        caps = self.info.get("capabilities", {})
        errors = caps.get("errors", {})
        return [Check(k, bool(caps.get(k)), errors.get(k, "")) for k in ("root", "netns", "mntns", "pidns",
                                                                        "uid_drop", "seccomp")]


_shared: Sandbox | None = None
_shared_lock = threading.Lock()


def get_sandbox() -> Sandbox:
    """The process-wide sandbox (started on first use, closed at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Sandbox()
            atexit.register(_close_shared)
        if not _shared.running:
            _shared.start()
        return _shared


def _close_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


def run_suite(problem_like: Any, code: str, kind: str = "public", *, prelude: bool = False) -> ExecutionResult:
    """Run one program against one suite of ``problem_like`` (an ORM Problem or anything with code_prefix,
    setup_code, public_tests, private_tests, entry_point); ``prelude``: the reference's import lines first."""
    return get_sandbox().run_many([(problem_like, code, kind)], prelude=prelude)[0]
