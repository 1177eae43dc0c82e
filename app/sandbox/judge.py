"""The judge: the trusted process that runs a suite's test code against a candidate living in another process.

One judge per program, forked from the zygote, parent of the candidate's process. It runs the problem's prefix
(trusted helpers), the setup code and each test statement in its own interpreter, where each name of the
candidate's program that the tests read is a proxy (``app.sandbox.remote``): calling it is a request to the
candidate's process, whose answer comes back as plain data. Only those names: a global of the program never
replaces a builtin or a name of the suite (``app.sandbox.suite`` finds which names the suite's bytecode reads
and binds). A test passes only when its statement runs to the end here; the verdict and the feedback
(``app.sandbox.feedback``) are made from what each test raised.
"""

from __future__ import annotations

import _signal
import builtins
import keyword
import marshal
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from app.sandbox import feedback as fb
from app.sandbox.prefetch import MAP, MAPPED, PREFETCH
from app.sandbox.remote import (
    NOT_PLAIN_HINT,
    Conn,
    Deadline,
    ProgramExit,
    ProgramGone,
    ProgramObject,
    clean_info,
    module_for,
)
from app.sandbox.suite import BUILTIN_NAMES
from app.sandbox.types import Limits
from app.sandbox.verdict import Run, status_of

SETUP_FAILED = 71  # the candidate's process could not isolate itself (see executor)
_SIGALRM = int(signal.SIGALRM)
TEST_TEXT_CHARS = 1000  # of each test's source kept in the result


class Judge:
    """One job: the suite's code run against one program's process, each test's outcome recorded in ``run``
    and, where it did not pass, its feedback block in ``details``."""

    def __init__(self, job: dict[str, Any], conn: Conn, limits: Limits) -> None:
        self.job = job
        self.conn = conn
        self.limits = limits
        self.run = Run()
        self.details: list[str] = []  # per test: the feedback block when it did not pass
        self.details_setup = ""  # the feedback block of a failed setup
        self.collected: list[Any] = []
        self._armed = False

    def _alarm(self, signum: int, frame: Any) -> None:
        if self._armed:
            self._armed = False
            raise Deadline()

    def judge(self) -> Run:
        job = self.job
        tests_src: list[str] = job["tests"]
        deadline = self.conn.deadline
        _signal.signal(_SIGALRM, self._alarm)  # _signal: the signal module's enum wrapping is slow
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, max(0.001, deadline - time.monotonic()))
        try:
            self._judge(tests_src)
        except Deadline:
            self._fatal("timeout", len(self.run.tests))
        finally:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        # Tests never reached (a fatal stop): listed as errors, so every test has an outcome.
        reason = {"timeout": "not run: the time limit was reached", "memory": "not run: out of memory"}.get(
            self.run.fatal or "", "not run: the program stopped")
        while len(self.run.tests) < len(tests_src):
            self._record(tests_src[len(self.run.tests)], "error", reason, "")
        return self.run

    def _fatal(self, reason: str, index: int | None, detail: str = "") -> None:
        if self.run.fatal is None:
            self.run.fatal = reason
            self.run.fatal_test = index
            if reason == "timeout":
                self.run.timed_out = True
            if reason == "memory":
                self.run.memory_detail = detail or None

    def _record(self, test: str, outcome: str, message: str, detail: str) -> None:
        text = test if len(test) <= TEST_TEXT_CHARS else test[: TEST_TEXT_CHARS - 3] + "..."
        self.run.tests.append({"test": text, "outcome": outcome, "message": fb.sanitize(message)[:500]})
        self.details.append(detail)

    def _judge(self, tests_src: list[str]) -> None:
        """The prefix, the program's load, its globals, the setup, then each test in order; a step that fails
        ends the job there."""
        conn = self.conn
        code = self.job["compiled"]
        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        if not self._run_prefix(code, ns):
            return
        admits = _admission(code, set(ns))
        # Calls of the tests' asserts with literal arguments, made in one batch (see prefetch_sites).
        sites = [(k, site) for k, site in enumerate(code["sites"]) if admits(site[0])]
        calls = [site for _, site in sites]
        snapshot = self._load(code, sites, calls)
        if snapshot is None:
            return
        fetch_values = self._bind_globals(ns, snapshot, admits)
        if self.job.get("collect"):
            ns["__collect__"] = self.collected.append
        fetch, ns[PREFETCH] = _prefetched_calls(conn, {k: ns.get(site[0]) for k, site in sites})
        ns[MAP], ns[MAPPED] = conn.map_start, conn.mapped
        if calls and code["pipeline"]:
            fetch()
        if not self._fetch_values(ns, fetch_values) or not self._run_setup(code, ns):
            return
        if calls and not code["pipeline"]:
            try:
                conn.start_batch(calls, [k for k, _ in sites])
            except ProgramGone as gone:
                self._fatal(gone.reason, 0, gone.detail)
                return
            fetch()
        for i, src in enumerate(tests_src):
            if self.run.fatal is not None or not self._run_test(code, ns, i, src):
                return

    def _run_prefix(self, code: dict[str, Any], ns: dict[str, Any]) -> bool:
        """Run the problem's code prefix in the tests' namespace; False when the dataset's own code does not
        compile or its prefix fails (a setup error: no test runs)."""
        for part in ("prefix", "setup"):
            if isinstance(code[part], str):  # the dataset's own code does not compile
                self.run.setup_error = code[part]
                return False
        if code["prefix"] is None:
            return True
        try:
            exec(_code(code, "prefix"), ns)  # noqa: S102 - trusted helpers: the judge keeps its own copies
        except Deadline:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken prefix in the dataset
            self.run.setup_error = "the problem's code prefix failed: " + fb.exc_line(exc)
            return False
        return True

    def _load(self, code: dict[str, Any], sites: list[tuple[int, Any]], calls: list[Any]) -> list[Any] | None:
        """Have the candidate's process load the program (and, pipelined behind it, start the batch of the
        tests' calls): the snapshot of the program's globals it reports, or None when loading failed."""
        conn = self.conn
        pipeline = bool(calls) and code["pipeline"]
        try:
            conn.send(("load", code["prefix"], self.job["code"], code["setup_imports"], code.get("names")))
            if pipeline:
                conn.send(("batch", calls))
            op, payload = conn.reply(expect=("loaded", "loaderr"))
            if pipeline:
                conn.pending.extend(k for k, _ in sites)
        except ProgramGone as gone:
            self._fatal(gone.reason, None, gone.detail)
            self.run.load_error = {"gone": gone.reason, "detail": gone.detail}
            return None
        self.run.tests_started = True
        if op == "loaderr":
            info = clean_info(payload)
            self.run.load_error = info
            if info["type"] == "MemoryError":
                self.run.memory = True
            return None
        return payload if isinstance(payload, list) else []

    def _bind_globals(self, ns: dict[str, Any], snapshot: list[Any], admits: Callable[[Any], bool]
                      ) -> list[str]:
        """Bind the program's globals that the tests may see in their namespace; returns the names of those
        too large for the snapshot, to ask for once the batch is read."""
        conn = self.conn
        fetch_values: list[str] = []
        for entry in snapshot:
            if not (isinstance(entry, list) and len(entry) == 3 and admits(entry[0])):
                continue
            name, kind, value = entry
            if kind == "module" and isinstance(value, str):
                mod = module_for(value)
                ns[name] = mod if mod is not None else conn.global_ref(name, "module")
            elif kind == "value":
                ns[name] = value
            elif kind == "large":  # plain data too large for the snapshot: asked for once the batch is read
                fetch_values.append(name)
            else:
                ns[name] = conn.global_ref(name, value if isinstance(value, str) else "object")
        return fetch_values

    def _fetch_values(self, ns: dict[str, Any], names: list[str]) -> bool:
        """Ask for the large plain globals the snapshot left out; False when the program's process is gone."""
        conn = self.conn
        for name in names:
            try:
                ns[name] = conn.request(("value", conn.global_ref(name, "object")))
            except ProgramGone as gone:
                return self._gone_before_tests(gone)
            except Deadline:
                raise
            except BaseException:  # noqa: BLE001 - its own answer: the name stays unbound, as a test will say
                ns.pop(name, None)
        return True

    def _run_setup(self, code: dict[str, Any], ns: dict[str, Any]) -> bool:
        """Run the dataset's setup code; False when it failed (a setup error: no test runs)."""
        if code["setup"] is None:
            return True
        try:
            exec(_code(code, "setup"), ns)  # noqa: S102 - the dataset's setup code
        except ProgramGone as gone:
            return self._gone_before_tests(gone)
        except Deadline:
            raise
        except BaseException as exc:  # noqa: BLE001
            info = getattr(exc, "__mucode_remote__", None)
            if info is None and isinstance(exc, MemoryError):
                self._fatal("memory", None, "the tests ran out of memory on the program's results")
            self.run.setup_error = fb.summary(info) if info else fb.exc_line(exc)
            self.details_setup = fb.traceback_text(info) if info else fb.exc_line(exc)
            return False
        return True

    def _gone_before_tests(self, gone: ProgramGone) -> bool:
        """The program's process stopped answering during the setup: a setup error (returns False)."""
        self._fatal(gone.reason, None, gone.detail)
        self.run.setup_error = gone.detail or gone.reason
        return False

    def _run_test(self, code: dict[str, Any], ns: dict[str, Any], i: int, src: str) -> bool:
        """Run test ``i`` and record its outcome; False on a fatal stop (no further test runs)."""
        conn = self.conn
        blob = code["tests"][i]
        if isinstance(blob, str):  # the test did not compile (a dataset problem)
            self._record(src, "error", blob, blob)
            return True
        conn.not_plain = []
        gone_before = conn.gone
        try:
            exec(_code(code, "tests", i), ns)  # noqa: S102 - the dataset's test statement
            if conn.gone is not gone_before:  # the test caught it (``except BaseException``): still gone
                raise conn.gone  # type: ignore[misc]
        except ProgramGone as gone:
            self._fatal(gone.reason, i, gone.detail)
            self._record(src, "error", fb.gone_text(gone, self.limits), "")
            return False
        except ProgramExit as ex:
            line = fb.exit_text(ex.info)
            self._record(src, "error", line, line)
        except AssertionError as exc:
            info = getattr(exc, "__mucode_remote__", None)
            if info is not None:
                self._record(src, "error", fb.summary(info), fb.traceback_text(info))
            else:
                msg = fb.exc_line(exc)
                detail = msg
                if conn.not_plain:
                    detail += f"\nNote: the program returned a {conn.not_plain[0]} object; {NOT_PLAIN_HINT}."
                self._record(src, "fail", msg, detail)
        except (Deadline, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - anything else the test statement raised
            info = getattr(exc, "__mucode_remote__", None)
            if info is None and isinstance(exc, MemoryError):  # the judge's own limit, on the program's data
                self._fatal("memory", i, "the tests ran out of memory on the program's results")
                self._record(src, "error", "MemoryError", "")
                return False
            if info is not None:
                if info["type"] == "MemoryError":
                    self.run.memory = True
                self._record(src, "error", fb.summary(info), fb.traceback_text(info))
            else:
                self._record(src, "error", fb.exc_line(exc), fb.exc_line(exc))
        else:
            self._record(src, "pass", "", "")
        if conn.memory_error:
            self.run.memory = True
        return True


def _admission(code: dict[str, Any], trusted: set[str]) -> Callable[[Any], bool]:
    """Whether a global of the program may be bound in the tests' namespace: one the suite reads
    (``names``), never a name of its own (``trusted``: the prefix's; ``bound``: the suite's), a builtin (the
    problem's entry point excepted: MBPP's ``sum``) or a dunder."""
    names = code.get("names")
    wanted = None if names is None else frozenset(names)

    def admits(name: Any) -> bool:
        return (type(name) is str and (wanted is None or name in wanted) and name.isidentifier()
                and not keyword.iskeyword(name) and not (name.startswith("__") and name.endswith("__"))
                and name not in trusted and name not in code.get("bound", ())
                and (name not in BUILTIN_NAMES or name == code.get("entry_point")))

    return admits


def _prefetched_calls(conn: Conn, targets: dict[int, Any]) -> tuple[Callable[[], None], Callable[..., Any]]:
    """``fetch``, which reads the answers of the batch of the tests' calls (``prefetch.prefetch_sites``), and
    ``use``, which each rewritten call makes: the answer fetched for call ``k`` when ``fn`` is still the
    program's object it was fetched from (``targets``), else the call made now."""
    prefetched: dict[int, tuple[Any, ...]] = {}

    def fetch() -> None:
        while conn.pending:
            try:
                k, res = conn.next_result()
            except ProgramGone:
                return  # the tests that need the missing answers will report it
            prefetched[k] = res

    def use(k: int, fn: Any, /, *args: Any, **kwargs: Any) -> Any:  # positional: a test may pass k=, fn=
        entry = prefetched.pop(k, None)
        if entry is None or fn is not targets.get(k) or type(fn) is not ProgramObject:
            return fn(*args, **kwargs)
        if entry[0] == "raise":
            raise entry[1]
        conn.not_plain.extend(entry[2])
        return entry[1]

    return fetch, use


def _code(compiled: dict[str, Any], part: str, i: int | None = None) -> Any:
    """A code object of a compiled suite, unmarshalled once per judge (the suite stays in its cache)."""
    cache = compiled.setdefault("_loaded", {})
    key = (part, i)
    code = cache.get(key)
    if code is None:
        code = cache[key] = marshal.loads(compiled[part] if i is None else compiled[part][i])  # noqa: S302 - code objects the executor compiled itself
    return code



# -- the judge process --------------------------------------------------------------------------------------
def _read_output(fd: int, limit_chars: int) -> tuple[str, int]:
    try:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, limit_chars * 4, 0)
    except OSError:
        return "", 0
    text = raw.decode("utf-8", "replace")
    if len(text) > limit_chars or size > len(raw):
        text = text[:limit_chars] + f"\n... ({size} bytes in all)"
    return text, size


def result_of(judge: Judge | None, run: Run, limits: Limits, *, wait_status: int | None, alone: bool,
              out_fd: int, err_fd: int, started: float) -> dict[str, Any]:
    """The result of one program, once its process is gone: ``wait_status`` is its exit status, ``alone`` says
    it ended by itself (exit, crash, a limit) rather than by the judge's kill after the tests."""
    if alone and wait_status is not None:
        if os.WIFSIGNALED(wait_status):
            run.exit_signal = os.WTERMSIG(wait_status)
        elif os.WIFEXITED(wait_status):
            run.exit_code = os.WEXITSTATUS(wait_status)
    stdout, n_out = _read_output(out_fd, limits.capture_chars)
    stderr, n_err = _read_output(err_fd, limits.capture_chars)
    if run.exit_code == SETUP_FAILED and not run.tests_started:
        return {"status": "sandbox_error", "error": f"the program's process could not be isolated: {stderr}"}
    run.output_bytes = max(n_out, n_err)
    status_name = status_of(run, limits)
    details, setup_detail = (judge.details, judge.details_setup) if judge is not None else (None, "")
    text = fb.compose_feedback(run, status_name, limits, details=details, setup_detail=setup_detail)
    return {
        "status": status_name,
        "passed": status_name == "passed",
        "tests": run.tests,
        "feedback": text,
        "stdout": fb.sanitize(stdout),
        "stderr": fb.sanitize(stderr),
        "duration_ms": round((time.monotonic() - started) * 1000.0, 3),
        "collected": judge.collected if judge is not None else [],
    }
