"""The judge: the trusted process that runs a suite's test code against a candidate living in another process.

One judge per program, forked from the zygote, parent of the candidate's process. It runs the problem's prefix
(trusted helpers), the setup code and each test statement in its own interpreter, where each name of the
candidate's program that the tests read is a :class:`ProgramObject`: calling it, reading an attribute or
iterating it is a request to the candidate's process, whose answer comes back as plain data
(``app.sandbox.wire``). Only those names: a global of the program never replaces a builtin or a name of the
suite (``compile_suite`` finds which names the suite's bytecode reads and binds). So the test
code, the expected values and the comparisons all stay here, where the candidate cannot reach; the candidate's
process only ever sees the arguments the tests pass to its functions.
"""

from __future__ import annotations

import _signal
import ast
import builtins
import contextlib
import dis
import keyword
import marshal
import os
import re
import signal
import sys
import time
import types
from collections import deque
from typing import Any

from app.sandbox import feedback as fb
from app.sandbox import wire
from app.sandbox.child import convert
from app.sandbox.types import Limits
from app.sandbox.verdict import Run, status_of

SETUP_FAILED = 71  # the candidate's process could not isolate itself (see executor)
_SIGALRM = int(signal.SIGALRM)
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
MAX_REPLY = 64 << 20  # bytes of one answer from the candidate
# What one program's answers may make the judge hold, counted as received in all (the items of iterations
# over its objects included): past any of these the program fails with status ``memory``. The datasets'
# reference solutions need at most 147 MB (HumanEval+/15), 10 million values (HumanEval+/130) and 56 objects.
# The judge's own memory limit (``Limits.judge_memory_mb``, an address-space rlimit) is the backstop for what
# the tests compute from them.
JOB_BYTES = 384 << 20
JOB_VALUES = 32_000_000
JOB_OBJECTS = 100_000
# A loop's calls sent ahead, at most: well within a socket's buffer (which also counts each message's overhead,
# about 1 KiB), so that sending never waits for the program.
STREAM_BYTES = 64 << 10
STREAM_CALLS = 32
TEST_TEXT_CHARS = 1000  # of each test's source kept in the result
NOT_PLAIN_HINT = ("only None, bool, int, float, complex, str, bytes, list, tuple, dict, set and frozenset values "
                  "(and nestings of them) can be compared")
_SAFE_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) - {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "webbrowser", "pydoc", "ensurepip",
    "venv", "lib2to3", "pdb", "code", "pty", "tty", "curses", "__main__",
}
_BUILTIN_NAMES = frozenset(vars(builtins))
# Names that look globals up by a string the tests' names cannot show: with one of them in a suite, every
# program global not shadowing a builtin or a name of the suite is put in the tests' namespace.
_DYNAMIC_LOOKUP = frozenset({"eval", "exec", "globals", "vars", "locals", "dir", "__import__"})


class ProgramGone(BaseException):
    """The candidate's process can no longer answer (timed out, exited, crashed, or broke the protocol)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class ProgramExit(BaseException):
    """The program raised SystemExit (or another BaseException) instead of returning."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info.get("type"))
        self.info = info


class _Deadline(BaseException):
    pass


def _clean_info(raw: Any) -> dict[str, Any]:
    """The candidate's description of an exception, checked field by field (it is plain data it chose)."""
    d = raw if isinstance(raw, dict) else {}

    def s(v: Any, default: str = "") -> str:
        return v if isinstance(v, str) else default

    frames = []
    for f in d.get("frames") if isinstance(d.get("frames"), list) else []:
        if isinstance(f, list) and len(f) == 3 and isinstance(f[0], int):
            frames.append([f[0], s(f[1], "?")[:100], s(f[2])[:200]])
    type_name = s(d.get("type"), "Exception")
    if not _TYPE_NAME.fullmatch(type_name):  # it names a class the judge creates: an identifier, nothing else
        type_name = "ProgramError"
    info: dict[str, Any] = {
        "type": type_name,
        "bases": [b for b in d.get("bases", []) if isinstance(b, str)][:20] if isinstance(d.get("bases"), list)
        else [],
        "message": s(d.get("message"))[:2000],
        "frames": frames[:20],
        "omitted": d["omitted"] if isinstance(d.get("omitted"), int) else 0,
        "exit": d.get("exit") is True,
    }
    syn = d.get("syntax")
    if isinstance(syn, list) and len(syn) == 3:
        info["syntax"] = [syn[0] if isinstance(syn[0], int) else None, syn[1] if isinstance(syn[1], int) else None,
                          s(syn[2])[:200]]
    if "exit_code" in d and isinstance(d["exit_code"], (int, str, type(None))):
        info["exit_code"] = d["exit_code"]
    return info


_dynamic_classes: dict[tuple[str, type], type] = {}


def remote_exception(info: dict[str, Any]) -> BaseException:
    """A judge-side exception for one the program raised: the builtin class of the same name (or its nearest
    builtin ancestor, subclassed under the program's class name), so tests that catch by type still work."""
    if info["exit"]:
        return ProgramExit(info)
    message = info["message"]
    exc: BaseException | None = None
    chosen: type = Exception
    for name in info["bases"]:
        cls = getattr(builtins, name, None)
        if cls is StopIteration or cls is StopAsyncIteration:
            continue  # raised as such, it would end the tests' loop early (``all(map(f, xs))`` true) instead
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                exc = cls(message)
            except Exception:  # noqa: BLE001, S112 - e.g. UnicodeDecodeError needs 5 arguments: try its parent
                continue
            chosen = cls
            break
    if exc is None:
        exc = Exception(message)
    if chosen.__name__ != info["type"]:
        key = (info["type"], chosen)
        sub = _dynamic_classes.get(key)
        if sub is None:
            if len(_dynamic_classes) > 1024:  # a long-lived judge: programs choose these names
                _dynamic_classes.clear()
            sub = _dynamic_classes[key] = type(info["type"], (chosen,), {"__module__": "program"})
        with contextlib.suppress(Exception):
            exc = sub(message)
    exc.__mucode_remote__ = info  # type: ignore[attr-defined]
    return exc


class ProgramObject:
    """An object that lives in the candidate's process. Calls, attributes, items, ``len`` and iteration are
    requests; comparing it (other than by identity), hashing by value or asking its truth value is not
    possible: the answer would come from the candidate's code."""

    __slots__ = ("_conn", "_ref", "_tname")

    def __init__(self, conn: Conn, ref: tuple[bytes, Any], type_name: str) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_tname", type_name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._conn.request(("call", self, args, kwargs))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._conn.request(("getattr", self, name))

    def __setattr__(self, name: str, value: Any) -> None:
        self._conn.request(("setattr", self, name, value))

    def __getitem__(self, key: Any) -> Any:
        return self._conn.request(("getitem", self, key))

    def __len__(self) -> int:
        n = self._conn.request(("len", self))
        if type(n) is not int or n < 0:
            raise TypeError(f"len() of a {self._tname} object from the program is not a non-negative int")
        return n

    def __iter__(self) -> _RemoteIterator:
        it = self._conn.request(("iter", self))
        if not isinstance(it, ProgramObject):
            raise TypeError("iter() of a program object did not give an iterator")
        return _RemoteIterator(self._conn, it)

    def __bool__(self) -> bool:
        raise TypeError(f"the truth value of a {self._tname} object returned by the program cannot be used: "
                        f"{NOT_PLAIN_HINT}")

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<{self._tname} object from the program>"


class LargeValue:
    """A plain value the program returned that was too large to send (more than a few million parts): the
    judge holds its structural hash, computed where it was made. ``==`` with plain data compares hashes (the
    program never sees the value it is compared with, so it cannot aim for its hash); ``len`` and truth work;
    anything else needs the contents and raises."""

    __slots__ = ("digest", "length", "type_name")

    def __init__(self, digest: int, length: int, type_name: str) -> None:
        self.digest, self.length, self.type_name = digest, length, type_name

    def __eq__(self, other: object) -> bool:
        if type(other) is LargeValue:
            return other.digest == self.digest
        try:
            return wire.structural_hash(other) == self.digest
        except (TypeError, RecursionError):
            return False

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return self.length

    def __bool__(self) -> bool:
        return self.length > 0

    def __getattr__(self, name: str) -> Any:
        raise TypeError(f"the program's {self.type_name} of {self.length} items is too large to inspect; only "
                        "== and len() work on it")

    def __repr__(self) -> str:
        return f"<{self.type_name} of {self.length} items from the program, too large to show>"


class _RemoteIterator:
    __slots__ = ("_buf", "_conn", "_done", "_it")

    def __init__(self, conn: Conn, it: ProgramObject) -> None:
        self._conn, self._it, self._buf, self._done = conn, it, [], False

    def __iter__(self) -> _RemoteIterator:
        return self

    def __next__(self) -> Any:
        if not self._buf:
            if self._done:
                raise StopIteration
            reply = self._conn.request(("next", self._it, 256))
            if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], list)):
                raise TypeError("malformed iteration reply from the program")
            self._buf = reply[0][::-1]
            self._done = reply[1] is True
            if not self._buf:
                raise StopIteration
        return self._buf.pop()


class Conn:
    """The judge's end of the connection to the candidate's process."""

    def __init__(self, fd: int, deadline: float, *, send_ahead: bool = True) -> None:
        self.fd = fd
        self.deadline = deadline
        self.encoder = wire.Encoder(self._to_ref, convert=self._convert)
        self.not_plain: list[str] = []  # type names of non-plain results in the current test
        self.gone: ProgramGone | None = None
        self.memory_error = False
        self.pending: deque[Any] = deque()  # tags of batched calls whose answers are still to be read
        self.stream: _Stream | None = None  # a test loop's calls, sent ahead of the loop
        self.reader = wire.FrameReader(fd, max_size=MAX_REPLY)
        self.streams = send_ahead  # off once a loop made other requests while its calls were ahead
        self.bytes_left = JOB_BYTES  # the caps on what the program's answers may make this judge hold
        self.values = [0]
        self.objects = 0

    @staticmethod
    def _convert(v: Any) -> Any:
        if type(v) is ProgramObject:
            return wire.NOT_PLAIN  # sent as its reference
        return convert(v)  # NOT_PLAIN for anything else: _to_ref refuses it

    @staticmethod
    def _to_ref(obj: Any) -> tuple[bytes, Any]:
        if type(obj) is ProgramObject:
            return object.__getattribute__(obj, "_ref")
        name = library_name(obj)
        if name is not None:
            return b"M", name
        raise TypeError(f"a {type(obj).__name__} object cannot be passed to the program: {NOT_PLAIN_HINT}")

    def _from_ref(self, tag: bytes, ident: Any) -> Any:
        self.objects += 1
        if self.objects > JOB_OBJECTS:
            raise wire.OverBudget(f"more than {JOB_OBJECTS} objects")
        if tag == b"H":
            return LargeValue(*ident)
        if tag != b"R":
            raise wire.WireError("unexpected name reference from the program")
        number, type_name = ident
        self.not_plain.append(type_name)
        return ProgramObject(self, (b"R", (number, type_name)), type_name)

    def global_ref(self, name: str, type_name: str) -> ProgramObject:
        return ProgramObject(self, (b"G", name), type_name)

    def request(self, msg: Any) -> Any:
        if self.pending:  # never: batches are read to the end before the tests run
            raise RuntimeError("a request while batched answers are pending")
        if self.stream is not None:
            if self.stream.sent > self.stream.used:
                # The program is ahead of this loop, whose body asks something else of it (an attribute of an
                # object it returned...): no more calls sent ahead for this program, so at most one window of
                # calls ever runs before a request the loop would have made first.
                self.streams = False
            self.drain_stream()
        self.send(msg)
        return self.reply()

    # -- streams: the calls a test loop will make, ``fn(*item) for item in items``, sent ahead of it -------------
    def map_start(self, fn_thunk: Any, items_thunk: Any, star: bool, iterable: Any) -> Any:
        """At the start of a rewritten loop (see ``_map_loop``): when ``fn`` is the program's and ``items`` a
        list, its calls start going out now; the loop itself is unchanged (``iterable`` is returned)."""
        if self.stream is not None:
            self.drain_stream()
        try:
            fn, items = fn_thunk(), items_thunk()
        except Exception:  # noqa: BLE001 - an unbound name: the loop raises it where it would have
            return iterable
        if self.streams and type(fn) is ProgramObject and type(items) in (list, tuple) and len(items) > 1:
            self.stream = _Stream(fn, items, star)
            self._fill_stream()
        return iterable

    def mapped(self, fn: Any, item: Any, star: bool) -> Any:
        """The loop's call ``fn(*item)`` (``fn(item)``): the answer to the call sent ahead when it is the one
        expected next (same function, the list's next item itself), else the call made now."""
        st = self.stream
        if st is not None and fn is st.fn and st.used < st.limit and item is st.items[st.used]:
            if st.used:  # the previous call's iteration went through: more of them will
                st.window = min(STREAM_CALLS, st.window * 2)
            if st.sent - st.used <= st.window // 2:  # half the window answered: the next chunk
                self._fill_stream()
            if st.used < st.sent:
                st.used += 1
                st.sizes.popleft()
                return self.reply()
        return fn(*item) if star else fn(item)

    def _fill_stream(self) -> None:
        """Send the next calls, as one batch: up to the window (small at first, so a program that fails its
        first input wastes little; doubled by each answer) and STREAM_BYTES in flight (a large call goes alone,
        to a program waiting for it)."""
        st = self.stream
        assert st is not None
        chunk: list[bytes] = []
        size = sum(st.sizes)  # bytes in flight, with the chunk's
        while st.sent + len(chunk) < st.limit and st.sent + len(chunk) - st.used < st.window:
            if st.next_call is None:
                item = st.items[st.sent + len(chunk)]
                try:
                    args = tuple(item) if st.star else (item,)
                    st.next_call = self.encoder.encode((st.fn, args, {}))
                except Exception:  # noqa: BLE001 - not plain: from here on the loop makes its calls itself
                    st.limit = st.sent + len(chunk)
                    break
            if (st.sizes or chunk) and size + len(st.next_call) > STREAM_BYTES:
                break
            chunk.append(st.next_call)
            size += len(st.next_call)
            st.next_call = None
        if chunk:
            self._send_raw(wire.batch_of(chunk))
            st.sizes.extend(len(c) for c in chunk)
            st.sent += len(chunk)

    def drain_stream(self) -> None:
        """The loop ended early or made other requests: read the answers still on their way (their calls were
        made), so the next answer read is the next request's."""
        st, self.stream = self.stream, None
        if st is None:
            return
        saved = self.not_plain
        try:
            for _ in range(st.sent - st.used):
                try:
                    self.reply()
                except (ProgramGone, _Deadline):
                    raise
                except BaseException:  # noqa: BLE001, S110 - the program's exception for a call nobody uses
                    pass
        finally:
            self.not_plain = saved

    # -- batches: calls sent at once, answers read one by one ----------------------------------------------
    def start_batch(self, calls: list[Any], tags: list[Any]) -> None:
        self.send(("batch", calls))
        self.pending.extend(tags)

    def next_result(self) -> tuple[Any, tuple[Any, ...]]:
        """(tag, ("ok", value, non-plain type names) or ("raise", exception)) of the next batched call."""
        tag = self.pending.popleft()
        saved, self.not_plain = self.not_plain, []
        try:
            value = self.reply()
            return tag, ("ok", value, self.not_plain)
        except ProgramGone:
            self.pending.clear()
            raise
        except _Deadline:
            raise
        except BaseException as exc:  # noqa: BLE001 - the program's exception, raised where the call was
            return tag, ("raise", exc, [])
        finally:
            self.not_plain = saved

    def send(self, msg: Any) -> None:
        if self.gone is not None:
            raise self.gone
        self._send_raw(self.encoder.encode(msg))  # TypeError for values that cannot be sent: a test error

    def _send_raw(self, payload: bytes) -> None:
        if self.gone is not None:
            raise self.gone
        try:
            wire.send_frame(self.fd, payload)
        except (BrokenPipeError, ConnectionResetError):
            self.gone = ProgramGone("died")
            raise self.gone from None

    def reply(self, expect: tuple[str, ...] = ("ok", "raise")) -> Any:
        if self.gone is not None:
            raise self.gone
        try:
            self.reader.max_size = min(MAX_REPLY, self.bytes_left)
            frame = self.reader.recv(self.deadline)
            self.bytes_left -= len(frame)
            reply = wire.decode(frame, self._from_ref, max_nodes=JOB_VALUES, count=self.values)
        except wire.Timeout:
            self.gone = ProgramGone("timeout")
        except (wire.Closed, BrokenPipeError, ConnectionResetError):
            self.gone = ProgramGone("died")
        except wire.OverBudget as exc:
            self.gone = ProgramGone("memory", f"the program returned too much to the tests: {exc} in all")
        except wire.TooLarge as exc:
            if exc.size is not None and exc.size <= MAX_REPLY:  # within one answer's limit: over the total
                self.gone = ProgramGone("memory", "the program returned too much to the tests: more than "
                                                  f"{JOB_BYTES >> 20} MiB in all")
            else:
                self.gone = ProgramGone("broken", f"the program's answer is too large ({exc})")
        except MemoryError:
            self.gone = ProgramGone("memory", "the tests ran out of memory holding the program's results")
        except (wire.WireError, OSError, ValueError, TypeError, OverflowError) as exc:
            self.gone = ProgramGone("broken", f"the program corrupted its connection to the tests ({exc})")
        if self.gone is not None:
            raise self.gone
        if not (isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], str)):
            self.gone = ProgramGone("broken", "the program corrupted its connection to the tests")
            raise self.gone
        op, value = reply
        if op not in expect:
            self.gone = ProgramGone("broken", "the program corrupted its connection to the tests")
            raise self.gone
        if op == "ok":
            return value
        if op == "raise":
            info = _clean_info(value)
            if info["type"] == "MemoryError":
                self.memory_error = True
            raise remote_exception(info)
        return reply


class _Stream:
    __slots__ = ("fn", "items", "limit", "next_call", "sent", "sizes", "star", "used", "window")

    def __init__(self, fn: ProgramObject, items: list[Any] | tuple[Any, ...], star: bool) -> None:
        self.fn, self.items, self.star = fn, items, star
        self.limit = len(items)  # calls that can be sent ahead (up to the first whose arguments are not plain)
        self.sent = 0
        self.used = 0
        self.sizes: deque[int] = deque()  # bytes of each request sent and not yet answered
        self.next_call: bytes | None = None  # encoded, waiting for room
        self.window = 2  # calls in flight at most


def library_name(obj: Any) -> str | None:
    """``module:qualname`` when ``obj`` is a class or function of the standard library (``int``, ``str.lower``,
    ``math.sqrt``): the tests may pass those to a program, which finds its own copy by that name."""
    if not isinstance(obj, (type, types.BuiltinFunctionType, types.FunctionType, types.MethodDescriptorType,
                            types.WrapperDescriptorType, types.BuiltinMethodType)):
        return None
    module = getattr(obj, "__module__", None) or ("builtins" if isinstance(obj, types.BuiltinFunctionType)
                                                   else None)
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(obj, (types.MethodDescriptorType, types.WrapperDescriptorType)):
        owner = getattr(obj, "__objclass__", None)
        module = getattr(owner, "__module__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    if module != "builtins" and module.split(".")[0] not in _SAFE_STDLIB:
        return None
    try:
        found: Any = builtins if module == "builtins" else sys.modules[module]
        for part in qualname.split("."):
            found = getattr(found, part)
    except (KeyError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is obj else None


def _module_for(name: str) -> Any:
    """The judge's own copy of a module the program imported: only one the judge has already loaded, of the
    standard library or NumPy (never imported on the program's word: importing runs the module's code here,
    and a few, ``unittest.__main__``, end the process)."""
    mod = sys.modules.get(name)
    if isinstance(mod, types.ModuleType) and name.split(".")[0] in _SAFE_STDLIB | {"numpy"}:
        return mod
    return None


def _exc_line(exc: BaseException) -> str:
    name = type(exc).__name__
    msg = str(exc)
    return f"{name}: {msg}" if msg else name


class Judge:
    def __init__(self, job: dict[str, Any], conn: Conn, limits: Limits) -> None:
        self.job = job
        self.conn = conn
        self.limits = limits
        self.run = Run()
        self.details: list[str] = []  # per test: the feedback block when it did not pass
        self.collected: list[Any] = []
        self._armed = False

    def _alarm(self, signum: int, frame: Any) -> None:
        if self._armed:
            self._armed = False
            raise _Deadline()

    def judge(self) -> Run:
        job = self.job
        tests_src: list[str] = job["tests"]
        deadline = self.conn.deadline
        _signal.signal(_SIGALRM, self._alarm)  # _signal: the signal module's enum wrapping is slow
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, max(0.001, deadline - time.monotonic()))
        try:
            self._judge(tests_src)
        except _Deadline:
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
        job = self.job
        conn = self.conn
        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        code = job["compiled"]
        for part in ("prefix", "setup"):
            if isinstance(code[part], str):  # the dataset's own code does not compile
                self.run.setup_error = code[part]
                return
        if code["prefix"] is not None:
            try:
                exec(_code(code, "prefix"), ns)  # noqa: S102 - trusted helpers: the judge keeps its own copies
            except _Deadline:
                raise
            except BaseException as exc:  # noqa: BLE001 - a broken prefix in the dataset
                self.run.setup_error = "the problem's code prefix failed: " + _exc_line(exc)
                return
        trusted = set(ns)
        names = code.get("names")
        wanted = None if names is None else frozenset(names)

        def admits(name: Any) -> bool:
            """Whether a global of the program may be bound in the tests' namespace: one the suite reads
            (``names``), never a name of its own, a builtin (the problem's entry point excepted: MBPP's
            ``sum``) or a dunder."""
            return (type(name) is str and (wanted is None or name in wanted) and name.isidentifier()
                    and not keyword.iskeyword(name) and not (name.startswith("__") and name.endswith("__"))
                    and name not in trusted and name not in code.get("bound", ())
                    and (name not in _BUILTIN_NAMES or name == code.get("entry_point")))

        # Calls of the tests' asserts with literal arguments, made in one batch (see prefetch_sites).
        sites = [(k, site) for k, site in enumerate(code["sites"]) if admits(site[0])]
        calls = [site for _, site in sites]
        try:
            conn.send(("load", code["prefix"], job["code"], code["setup_imports"], names))
            if calls and code["pipeline"]:
                conn.send(("batch", calls))
            op, payload = conn.reply(expect=("loaded", "loaderr"))
            if calls and code["pipeline"]:
                conn.pending.extend(k for k, _ in sites)
        except ProgramGone as gone:
            self._fatal(gone.reason, None, gone.detail)
            self.run.load_error = {"gone": gone.reason, "detail": gone.detail}
            return
        self.run.tests_started = True
        if op == "loaderr":
            info = _clean_info(payload)
            self.run.load_error = info
            if info["type"] == "MemoryError":
                self.run.memory = True
            return
        fetch_values: list[str] = []
        for entry in payload if isinstance(payload, list) else []:
            if not (isinstance(entry, list) and len(entry) == 3 and admits(entry[0])):
                continue
            name, kind, value = entry
            if kind == "module" and isinstance(value, str):
                mod = _module_for(value)
                ns[name] = mod if mod is not None else conn.global_ref(name, "module")
            elif kind == "value":
                ns[name] = value
            elif kind == "large":  # plain data too large for the snapshot: asked for once the batch is read
                fetch_values.append(name)
            else:
                ns[name] = conn.global_ref(name, value if isinstance(value, str) else "object")
        if job.get("collect"):
            ns["__collect__"] = self.collected.append
        targets = {k: ns.get(site[0]) for k, site in sites}
        prefetched: dict[int, tuple[Any, ...]] = {}

        def fetch() -> None:
            while conn.pending:
                try:
                    k, res = conn.next_result()
                except ProgramGone:
                    return  # the tests that need the missing answers will report it
                prefetched[k] = res

        def use(k: int, fn: Any, *args: Any, **kwargs: Any) -> Any:
            entry = prefetched.pop(k, None)
            if entry is None or fn is not targets.get(k) or type(fn) is not ProgramObject:
                return fn(*args, **kwargs)
            if entry[0] == "raise":
                raise entry[1]
            conn.not_plain.extend(entry[2])
            return entry[1]

        ns[PREFETCH] = use
        ns[MAP], ns[MAPPED] = conn.map_start, conn.mapped
        if calls and code["pipeline"]:
            fetch()
        for name in fetch_values:
            try:
                ns[name] = conn.request(("value", conn.global_ref(name, "object")))
            except ProgramGone as gone:
                self._fatal(gone.reason, None, gone.detail)
                self.run.setup_error = gone.detail or gone.reason
                return
            except _Deadline:
                raise
            except BaseException:  # noqa: BLE001 - its own answer: the name stays unbound, as a test will say
                ns.pop(name, None)
        if code["setup"] is not None:
            try:
                exec(_code(code, "setup"), ns)  # noqa: S102 - the dataset's setup code
            except ProgramGone as gone:
                self._fatal(gone.reason, None, gone.detail)
                self.run.setup_error = gone.detail or gone.reason
                return
            except _Deadline:
                raise
            except BaseException as exc:  # noqa: BLE001
                info = getattr(exc, "__mucode_remote__", None)
                if info is None and isinstance(exc, MemoryError):
                    self._fatal("memory", None, "the tests ran out of memory on the program's results")
                self.run.setup_error = fb.summary(info) if info else _exc_line(exc)
                self.details_setup = fb.traceback_text(info) if info else _exc_line(exc)
                return
        if calls and not code["pipeline"]:
            try:
                conn.start_batch(calls, [k for k, _ in sites])
            except ProgramGone as gone:
                self._fatal(gone.reason, 0, gone.detail)
                return
            fetch()
        for i, src in enumerate(tests_src):
            if self.run.fatal is not None:
                return
            blob = code["tests"][i]
            if isinstance(blob, str):  # the test did not compile (a dataset problem)
                self._record(src, "error", blob, blob)
                continue
            conn.not_plain = []
            gone_before = conn.gone
            try:
                exec(_code(code, "tests", i), ns)  # noqa: S102 - the dataset's test statement
                if conn.gone is not gone_before:  # the test caught it (``except BaseException``): still gone
                    raise conn.gone  # type: ignore[misc]
            except ProgramGone as gone:
                self._fatal(gone.reason, i, gone.detail)
                self._record(src, "error", _gone_text(gone, self.limits), "")
                return
            except ProgramExit as ex:
                line = _exit_text(ex.info)
                self._record(src, "error", line, line)
            except AssertionError as exc:
                info = getattr(exc, "__mucode_remote__", None)
                if info is not None:
                    self._record(src, "error", fb.summary(info), fb.traceback_text(info))
                else:
                    msg = _exc_line(exc)
                    detail = msg
                    if conn.not_plain:
                        detail += (f"\nNote: the program returned a {conn.not_plain[0]} object; "
                                   f"{NOT_PLAIN_HINT}.")
                    self._record(src, "fail", msg, detail)
            except (_Deadline, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001 - anything else the test statement raised
                info = getattr(exc, "__mucode_remote__", None)
                if info is None and isinstance(exc, MemoryError):  # the judge's own limit, on the program's values
                    self._fatal("memory", i, "the tests ran out of memory on the program's results")
                    self._record(src, "error", "MemoryError", "")
                    return
                if info is not None:
                    if info["type"] == "MemoryError":
                        self.run.memory = True
                    self._record(src, "error", fb.summary(info), fb.traceback_text(info))
                else:
                    self._record(src, "error", _exc_line(exc), _exc_line(exc))
            else:
                self._record(src, "pass", "", "")
            if conn.memory_error:
                self.run.memory = True



def _code(compiled: dict[str, Any], part: str, i: int | None = None) -> Any:
    """A code object of a compiled suite, unmarshalled once per judge (the suite stays in its cache)."""
    cache = compiled.setdefault("_loaded", {})
    key = (part, i)
    code = cache.get(key)
    if code is None:
        code = cache[key] = marshal.loads(compiled[part] if i is None else compiled[part][i])
    return code


def _exit_text(info: dict[str, Any]) -> str:
    code = info.get("exit_code")
    if info["type"] == "SystemExit":
        return f"The program exited (SystemExit: {code!r}) instead of returning"
    return f"The program raised {info['type']} instead of returning"


def _gone_text(gone: ProgramGone, limits: Limits) -> str:
    if gone.reason == "timeout":
        return f"timed out (limit {limits.timeout_s:g} s)"
    if gone.reason == "died":
        return "the program's process ended before the test finished"
    if gone.reason == "memory":
        return "out of memory" + (f": {gone.detail}" if gone.detail else "")
    return gone.detail or "the program broke its connection to the tests"


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
    text = compose_feedback(judge, run, status_name, limits)
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


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def compose_feedback(judge: Judge | None, run: Run, status: str, limits: Limits) -> str:
    if status == "passed":
        return fb.PASSED
    tests = run.tests
    details = judge.details if judge is not None else [""] * len(tests)
    first = next((i for i, t in enumerate(tests) if t["outcome"] != "pass"), None)
    where = ""
    if run.fatal_test is not None and run.fatal_test < len(tests):
        where = "\n" + fb.failed_test_header(tests[run.fatal_test]["test"])
    elif first is not None and run.load_error is None:
        where = "\n" + fb.failed_test_header(tests[first]["test"])
    if status == "output_limit":
        text = (f"Code execution produced too much output: the limit is {limits.output_bytes // 1024} KiB "
                "for stdout, stderr and each file it writes" + where)
    elif status == "timeout":
        text = f"Code execution timed out: the limit is {limits.timeout_s:g} s for loading and all tests" + where
    else:
        parts = []
        le = run.load_error
        if status == "memory" and run.memory_detail:  # a cap on what the tests hold of its results
            parts.append(f"Code execution ran out of memory: {run.memory_detail}"
                         + (" (while it was being loaded, before any test ran)" if le is not None else where))
            return fb.cap(fb.sanitize("\n".join(parts)))
        if status == "memory":
            parts.append(f"Code execution ran out of memory (the limit is {limits.memory_mb} MB)")
        if le is not None and "gone" in le:
            if le["gone"] == "broken":
                parts.append("The program broke its connection to the tests while it was being loaded, before "
                             "any test ran" + (f": {le['detail']}" if le.get("detail") else ""))
            elif run.exit_signal is not None:
                parts.append(f"The program crashed while it was being loaded (killed by "
                             f"{_signal_name(run.exit_signal)}), before any test ran")
            else:
                code = run.exit_code if run.exit_code is not None else 0
                parts.append(f"The program exited (status {code}) while it was being loaded, before any test "
                             "ran")
        elif le is not None:
            if le.get("syntax"):
                parts.append("Your code has a syntax error:\n" + fb.traceback_text(le))
            elif le.get("exit"):
                parts.append(_exit_text(le).replace("instead of returning",
                                                    "while it was being loaded, before any test ran"))
            else:
                parts.append("The program raised an exception while it was being loaded, before any test ran:\n"
                             + fb.traceback_text(le))
        elif run.setup_error is not None:
            parts.append("The test setup failed: " + run.setup_error)
            extra = getattr(judge, "details_setup", "") if judge is not None else ""
            if extra and extra != run.setup_error:
                parts.append(extra)
        elif run.fatal in ("died", "broken") and run.fatal_test is not None:
            i = run.fatal_test
            parts.append(fb.failed_test_header(tests[i]["test"]))
            if run.exit_signal is not None:
                parts.append(f"The program crashed (killed by {_signal_name(run.exit_signal)})")
            elif run.fatal == "died":
                code = run.exit_code if run.exit_code is not None else 0
                parts.append(f"The program's process exited (status {code}) instead of returning")
            else:
                parts.append(tests[i]["message"])
        elif first is not None:
            parts.append(fb.failed_test_header(tests[first]["test"]))
            detail = details[first] if first < len(details) else ""
            parts.append(detail or tests[first]["message"] or "AssertionError")
        elif not tests:
            parts.append("The test suite is empty")
        text = "\n".join(p for p in parts if p)
    return fb.cap(fb.sanitize(text))


PREFETCH = "__mucode_prefetched__"
MAP, MAPPED = "__mucode_map__", "__mucode_mapped__"


def _literal(node: ast.AST) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _literal_call(node: ast.Call) -> tuple[Any, ...] | None:
    """(name, args, kwargs) of ``name(<literals>)``."""
    if not isinstance(node.func, ast.Name) or any(isinstance(a, ast.Starred) for a in node.args) \
            or any(k.arg is None for k in node.keywords):
        return None
    args, kwargs = [], {}
    for a in node.args:
        good, v = _literal(a)
        if not good:
            return None
        args.append(v)
    for kw in node.keywords:
        good, v = _literal(kw.value)
        if not good:
            return None
        kwargs[kw.arg] = v
    return node.func.id, tuple(args), kwargs


def _collect_calls(node: ast.AST | None, out: list[tuple[ast.Call, tuple[Any, ...]]],
                   eligible: Any = _literal_call) -> None:
    """Calls accepted by ``eligible`` that evaluating ``node`` makes exactly once, whatever the values (no
    short-circuit branch, loop, comprehension or lambda), in evaluation order."""
    if node is None:
        return
    if isinstance(node, ast.Call):
        site = eligible(node)
        if site is not None:
            out.append((node, site))
            return
        if not isinstance(node.func, ast.Name):
            _collect_calls(node.func, out, eligible)
        for a in node.args:
            _collect_calls(a.value if isinstance(a, ast.Starred) else a, out, eligible)
        for kw in node.keywords:
            _collect_calls(kw.value, out, eligible)
    elif isinstance(node, ast.Compare):
        _collect_calls(node.left, out, eligible)
        _collect_calls(node.comparators[0], out, eligible)  # a chain stops early: only the first pair is certain
    elif isinstance(node, ast.BoolOp):
        _collect_calls(node.values[0], out, eligible)
    elif isinstance(node, ast.UnaryOp):
        _collect_calls(node.operand, out, eligible)
    elif isinstance(node, ast.BinOp):
        _collect_calls(node.left, out, eligible)
        _collect_calls(node.right, out, eligible)
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for e in node.elts:
            _collect_calls(e.value if isinstance(e, ast.Starred) else e, out, eligible)
    elif isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            _collect_calls(k, out, eligible)
            _collect_calls(v, out, eligible)
    elif isinstance(node, ast.Subscript):
        _collect_calls(node.value, out, eligible)
        _collect_calls(node.slice, out, eligible)
    elif isinstance(node, ast.Attribute):
        _collect_calls(node.value, out, eligible)
    elif isinstance(node, ast.IfExp):
        _collect_calls(node.test, out, eligible)
    elif isinstance(node, ast.Slice):
        for part in (node.lower, node.upper, node.step):
            _collect_calls(part, out, eligible)


class _UsePrefetched(ast.NodeTransformer):
    def __init__(self, numbers: dict[int, int]) -> None:
        self.numbers = numbers

    def visit_Call(self, node: ast.Call) -> ast.AST:
        k = self.numbers.get(id(node))
        if k is None:
            return self.generic_visit(node)
        new = ast.Call(func=ast.copy_location(ast.Name(id=PREFETCH, ctx=ast.Load()), node),
                       args=[ast.copy_location(ast.Constant(k), node), node.func, *node.args],
                       keywords=node.keywords)
        return ast.copy_location(new, node)


def prefetch_sites(test: str, first: int, bound: set[str]) -> tuple[ast.Module, list[Any]]:
    """Rewrite the module-level asserts of one test so their ``name(<literals>)`` calls read answers fetched in
    one batch; returns the test's tree (rewritten where a call was found) and the (name, args, kwargs) of each
    call.
    The calls are made in the same order as the test would make them; a call whose name turns out not to be
    the program's (a builtin, a helper of the tests) is made normally."""
    tree = ast.parse(test)
    found: list[tuple[ast.Call, tuple[Any, ...]]] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assert):
            _collect_calls(stmt.test, found)
    found = [(node, site) for node, site in found if site[0] not in bound and site[0] != PREFETCH]
    map_loops(tree.body)
    if not found:
        return tree, []
    numbers = {id(node): first + i for i, (node, _) in enumerate(found)}
    return _UsePrefetched(numbers).visit(tree), [site for _, site in found]


def _loop_sources(target: ast.AST, it: ast.AST, out: dict[str, str]) -> None:
    """Loop variables bound to the items of a named list: ``for x in xs``, ``for x, y in zip(xs, ys)``,
    ``for i, (x, y) in enumerate(zip(xs, ys))``: {"x": "xs", "y": "ys"}."""
    if isinstance(target, ast.Name) and isinstance(it, ast.Name):
        out[target.id] = it.id
    elif isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and not it.keywords \
            and isinstance(target, ast.Tuple) and not any(isinstance(a, ast.Starred) for a in it.args):
        if it.func.id == "zip" and len(target.elts) == len(it.args):
            for t, a in zip(target.elts, it.args):
                _loop_sources(t, a, out)
        elif it.func.id == "enumerate" and len(it.args) == 1 and len(target.elts) == 2:
            _loop_sources(target.elts[1], it.args[0], out)


def _breaks(body: list[ast.stmt]) -> bool:
    """Whether a ``break`` of this loop (not of a loop nested in it) is in ``body``."""
    todo = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Break):
            return True
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.expr)):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return False


class _UseMapped(ast.NodeTransformer):
    def __init__(self, site: ast.Call, star: bool) -> None:
        self.site, self.star = site, star

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if node is not self.site:
            return self.generic_visit(node)
        item = node.args[0].value if self.star else node.args[0]
        new = ast.Call(func=ast.Name(id=MAPPED, ctx=ast.Load()), keywords=[],
                       args=[node.func, item, ast.Constant(self.star)])
        return ast.fix_missing_locations(ast.copy_location(new, node))


_PLAIN_NODES = (ast.Name, ast.Constant, ast.Starred, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp,
                ast.expr_context, ast.unaryop, ast.operator)


def _evaluated_first(node: ast.AST) -> list[ast.AST]:
    """The parts of ``node`` that are certainly evaluated, in order (as in ``_collect_calls``)."""
    if isinstance(node, ast.Call):
        return [node.func] + [a.value if isinstance(a, ast.Starred) else a for a in node.args] \
            + [k.value for k in node.keywords]
    if isinstance(node, ast.Compare):
        return [node.left, node.comparators[0]]
    if isinstance(node, ast.BoolOp):
        return node.values[:1]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value if isinstance(e, ast.Starred) else e for e in node.elts]
    if isinstance(node, ast.Dict):
        return [x for kv in zip(node.keys, node.values) for x in kv if x is not None]
    if isinstance(node, ast.Subscript):
        return [node.value, node.slice]
    if isinstance(node, ast.Attribute):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return [node.test]
    return []


def _first_call(node: ast.AST, site: ast.Call) -> bool | None:
    """Whether ``site`` is the first call ``node`` makes: everything evaluated before it is names, constants
    and operators on them (no call, attribute or item access that could reach the program). None: not found."""
    if node is site:
        return True
    parts = _evaluated_first(node)
    for i, part in enumerate(parts):
        found = _first_call(part, site)
        if found is not None:
            return found and all(isinstance(n, _PLAIN_NODES) for p in parts[:i] for n in ast.walk(p))
    return None


def _map_loop(loop: ast.For) -> bool:
    """Rewrite ``for <vars> in <named lists>: <first statement calling f(*x) or f(x)>`` so the loop's calls are
    sent to the program ahead of the loop (``Conn.map_start``) and each call reads its answer (``Conn.mapped``).
    The call must be made exactly once per iteration, first among the program's calls (the first statement,
    outside any branch), and the loop has no ``break``: the program then makes the same calls in the same
    order as the loop would, only sooner (with the items as they are when sent: a loop that changed its later
    items as it went would not be rewritten correctly; none of the datasets' does). EvalPlus checks are such
    loops, over hundreds of inputs."""
    sources: dict[str, str] = {}
    _loop_sources(loop.target, loop.iter, sources)
    if not sources or not loop.body or _breaks(loop.body):
        return False
    first = loop.body[0]
    expr = {ast.Expr: "value", ast.Assert: "test", ast.Assign: "value", ast.AnnAssign: "value"}.get(type(first))
    if expr is None:
        return False
    bound = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}

    def eligible(call: ast.Call) -> tuple[str, str, bool] | None:
        if not isinstance(call.func, ast.Name) or call.func.id in bound or call.keywords or len(call.args) != 1:
            return None
        arg = call.args[0]
        star = isinstance(arg, ast.Starred)
        name = arg.value if star else arg
        if isinstance(name, ast.Name) and name.id in sources:
            return call.func.id, name.id, star
        return None

    calls: list[tuple[ast.Call, tuple[Any, ...]]] = []
    _collect_calls(getattr(first, expr), calls, eligible)
    if not calls or not _first_call(getattr(first, expr), calls[0][0]):
        return False
    site, (fn, item, star) = calls[0]
    setattr(first, expr, _UseMapped(site, star).visit(getattr(first, expr)))

    def thunk(name: str) -> ast.Lambda:
        return ast.Lambda(args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
                          body=ast.Name(id=name, ctx=ast.Load()))

    loop.iter = ast.fix_missing_locations(ast.copy_location(ast.Call(
        func=ast.Name(id=MAP, ctx=ast.Load()), keywords=[],
        args=[thunk(fn), thunk(sources[item]), ast.Constant(star), loop.iter]), loop.iter))
    return True


def map_loops(body: list[ast.stmt]) -> bool:
    """``_map_loop`` on every for loop among these statements, at any depth of statements (function bodies,
    branches; never inside expressions, so the inputs' literals are not walked); True when one changed."""
    changed = False
    for stmt in body:
        if isinstance(stmt, ast.For):
            changed |= _map_loop(stmt)
        for name in ("body", "orelse", "finalbody"):
            sub = getattr(stmt, name, None)
            if isinstance(sub, list):
                changed |= map_loops(sub)
        for handler in getattr(stmt, "handlers", None) or []:
            changed |= map_loops(handler.body)
    return changed


def _bound_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _runs_calls(tree: ast.Module) -> bool:
    """Whether running the module calls anything (outside function and class bodies)."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Call):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(node.decorator_list if not isinstance(node, ast.Lambda) else [])
            todo.extend(d for d in (node.args.defaults + node.args.kw_defaults) if d is not None)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return False


_OP = dis.opmap
_EXTENDED_ARG, _LOAD_GLOBAL = _OP["EXTENDED_ARG"], _OP["LOAD_GLOBAL"]
_READS = frozenset(_OP[n] for n in ("LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS") if n in _OP)
_BINDS = frozenset({_OP["STORE_NAME"], _OP["DELETE_NAME"]})
_BINDS_GLOBAL = frozenset({_OP["STORE_GLOBAL"], _OP["DELETE_GLOBAL"]})


def global_names(code: types.CodeType, reads: set[str], binds: set[str]) -> None:
    """The names a module's code reads from its globals (``reads``, builtins included) and binds there
    (``binds``), from its bytecode: what the interpreter will look up, in functions and class bodies too.
    Reads the instructions' bytes directly (``dis.get_instructions`` is 15x slower on the EvalPlus suites)."""
    todo = [(code, True)]
    while todo:
        co, module = todo.pop()
        raw, names, ext = co.co_code, co.co_names, 0
        for i in range(0, len(raw), 2):
            op, arg = raw[i], raw[i + 1] | ext
            if op == _EXTENDED_ARG:
                ext = arg << 8
                continue
            ext = 0
            if op == _LOAD_GLOBAL:
                reads.add(names[arg >> 1])  # the low bit: whether a NULL is pushed too
            elif op in _READS:
                reads.add(names[arg])
            elif op in _BINDS_GLOBAL or (module and op in _BINDS):  # a class body's STORE_NAME is its own
                binds.add(names[arg])
        todo.extend((c, False) for c in co.co_consts if isinstance(c, types.CodeType))


def compile_suite(prefix: str, setup: str, tests: list[str], entry_point: str | None = None) -> dict[str, Any]:
    """Compile the trusted code once (in the executor) for every judge: marshalled code objects, the calls
    to fetch in one batch, and which of the program's globals the tests may see (``names``: those the suite
    reads and does not bind itself, none named like a builtin but the entry point; None where the suite looks
    names up by string)."""
    def comp(src: str, name: str) -> bytes | str | None:
        if not src.strip():
            return None
        try:
            return marshal.dumps(compile(src, name, "exec", dont_inherit=True))
        except SyntaxError as exc:
            return f"the {name.strip('<>')} code does not compile: SyntaxError: {exc.msg} (line {exc.lineno})"

    imports = setup_imports(setup)
    out: dict[str, Any] = {"prefix": comp(prefix, "<prefix>"), "setup": comp(setup, "<setup>"), "tests": [],
                           "sites": [], "pipeline": True, "setup_imports": comp(imports, "<setup>"),
                           "numpy": "numpy" in prefix or "numpy" in imports,  # what runs in the program's process
                           "entry_point": entry_point if isinstance(entry_point, str) and entry_point else None}
    bound: set[str] = set()
    if setup.strip() and isinstance(out["setup"], bytes):
        tree = ast.parse(setup)
        bound = _bound_names(tree)
        out["pipeline"] = not _runs_calls(tree)
        with contextlib.suppress(SyntaxError, ValueError, TypeError, RecursionError):
            if map_loops(tree.body):
                out["setup"] = marshal.dumps(compile(tree, "<setup>", "exec", dont_inherit=True))
    for i, t in enumerate(tests):
        name = f"<test {i + 1}>"
        try:
            tree, sites = prefetch_sites(t, len(out["sites"]), bound)
            code = compile(tree, name, "exec", dont_inherit=True)
        except (SyntaxError, RecursionError, ValueError, TypeError, MemoryError):
            try:  # the plain source: its own SyntaxError, or a test too deep for the rewriting
                code, sites = compile(t, name, "exec", dont_inherit=True), []
            except (SyntaxError, ValueError) as exc:  # ValueError: a null byte
                out["tests"].append(f"the test does not compile: {type(exc).__name__}: "
                                    f"{getattr(exc, 'msg', None) or exc}")
                continue
        out["tests"].append(marshal.dumps(code))
        out["sites"].extend(sites)
    reads: set[str] = set()
    binds: set[str] = set()
    for blob in [out["prefix"], out["setup"], *out["tests"]]:
        if isinstance(blob, bytes):
            global_names(marshal.loads(blob), reads, binds)
    entry = out["entry_point"]
    out["bound"] = frozenset(binds)
    out["names"] = None if reads & _DYNAMIC_LOOKUP else sorted(
        n for n in reads - binds
        if not (n.startswith("__") and n.endswith("__")) and (n not in _BUILTIN_NAMES or n == entry))
    return out


def setup_imports(setup: str) -> str:
    """The import statements of the setup code: they also run in the program's process, after its code, as
    they would in one file (a program may use a module that only the tests import)."""
    import ast

    try:
        tree = ast.parse(setup)
    except SyntaxError:
        return ""
    lines = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(lines)
