"""The harness inside a candidate's process: load the program, then answer the judge's requests.

This module is imported by the zygote before any job exists, so a candidate process starts with it already
in memory. It decides nothing: it loads the code (the problem's prefix, the candidate's code, the setup's
import lines), reports the names the program defined, and then runs exactly what the judge asks for (call
this function with these arguments, read this attribute, iterate this object) and sends back the result as
plain data, or a reference when the result is not plain. The tests and their expected values never enter
this process. A candidate can break this harness in any way it likes; the worst it achieves is to send back
values of its choosing, which is what any program can do by computing them.
"""

from __future__ import annotations

import builtins
import io
import os
import sys
from marshal import loads as _loads
from select import select as _select
from time import monotonic as _monotonic
from typing import Any

from app.sandbox import wire

SOLUTION = "<solution>"
PREFIX = "<prefix>"
SETUP = "<setup>"
MAX_FRAMES = 12
MAX_MESSAGE = 2000
HOLD_S = 0.005  # a batch's answers are sent together while it runs quicker than this
LARGE_NODES = 2_000_000  # an answer with more parts goes back as a structural hash (wire.Large)
SNAPSHOT_VALUE_NODES = 10_000  # a global sent with the names (plain data), at most; larger ones on request
SNAPSHOT_NODES = 100_000  # all of them together
SNAPSHOT_NAMES = 20_000  # globals listed at most (only where the tests look names up by string: else theirs)

_exit = os._exit


class _Refs:
    """Objects that stay in this process, by number."""

    def __init__(self) -> None:
        self.objects: dict[int, Any] = {}
        self.numbers: dict[int, int] = {}  # id(obj) -> number, so one object keeps one number
        self.next = 1

    def add(self, obj: Any) -> tuple[int, str]:
        key = id(obj)
        number = self.numbers.get(key)
        if number is None or self.objects.get(number) is not obj:
            number = self.next
            self.next += 1
            self.objects[number] = obj
            self.numbers[key] = number
        try:
            type_name = type(obj).__name__
        except BaseException:  # noqa: BLE001
            type_name = "object"
        return number, str(type_name)


def _numpy_scalar(v: Any) -> Any:
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, np.generic):
        return v.item()
    return wire.NOT_PLAIN


def convert(v: Any) -> Any:
    """A subclass of a plain type (Counter, OrderedDict, namedtuple, IntEnum, a str subclass...) as its plain
    contents, read through the base type's own methods so no override of the subclass runs. NumPy scalars as
    Python numbers. Anything else is not plain."""
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int.__int__(v)
    if isinstance(v, float):
        return float.__float__(v)
    if isinstance(v, complex):
        return complex.__complex__(v) if hasattr(complex, "__complex__") else complex(v.real, v.imag)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, bytes):
        return bytes.__bytes__(v) if hasattr(bytes, "__bytes__") else bytes(memoryview(v))
    if isinstance(v, list):
        return list(list.__iter__(v))
    if isinstance(v, tuple):
        return tuple(tuple.__iter__(v))
    if isinstance(v, dict):
        return dict(dict.items(v))
    if isinstance(v, frozenset):
        return frozenset(frozenset.__iter__(v))
    if isinstance(v, set):
        return set(set.__iter__(v))
    return _numpy_scalar(v)


def convert_deep(v: Any) -> Any:
    """``v`` with subclasses of plain types replaced by their plain contents at every level (for hashing a value
    too large to send); anything not plain raises TypeError."""
    t = type(v)
    if t in (str, int, float, bool, bytes, complex, type(None)):
        return v
    if t is list or t is tuple:
        if all(type(x) in (str, int, float, bool, bytes, complex, type(None), tuple) for x in v[:64]):
            try:
                hash(tuple(v))  # only hashable plain items below: nothing to convert
                return v
            except TypeError:
                pass
        return t(convert_deep(x) for x in v)
    if t is set or t is frozenset:
        return t(convert_deep(x) for x in v)
    if t is dict:
        return {convert_deep(k): convert_deep(x) for k, x in v.items()}
    c = convert(v)
    if c is wire.NOT_PLAIN:
        raise TypeError(f"{t.__name__} is not plain data")
    return convert_deep(c)


def _source_line(lines: list[str], lineno: int | None) -> str:
    if lineno and 1 <= lineno <= len(lines):
        return lines[lineno - 1].strip()[:200]
    return ""


def exception_info(exc: BaseException, code_lines: list[str]) -> dict[str, Any]:
    """Type, builtin ancestors, message and the frames of the candidate's own code (its line numbers)."""
    t = type(exc)
    try:
        bases = [c.__name__ for c in t.__mro__ if c.__module__ == "builtins" and issubclass(c, BaseException)]
    except BaseException:  # noqa: BLE001
        bases = ["Exception"]
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001
        message = "<the exception's message could not be printed>"
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    frames: list[list[Any]] = []
    total = 0
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == SOLUTION:
            total += 1
            frames.append([tb.tb_lineno, code.co_name, _source_line(code_lines, tb.tb_lineno)])
            if len(frames) > MAX_FRAMES:
                del frames[MAX_FRAMES // 2]
        tb = tb.tb_next
    info: dict[str, Any] = {
        "type": str(t.__name__),
        "bases": bases,
        "message": message,
        "frames": frames,
        "omitted": max(0, total - len(frames)),
        "exit": not isinstance(exc, Exception),
    }
    if isinstance(exc, SyntaxError) and exc.filename == SOLUTION:
        info["message"] = str(exc.msg)
        info["syntax"] = [exc.lineno, exc.offset, (exc.text or "").rstrip("\n")[:200]]
    if isinstance(exc, SystemExit):
        code = exc.code
        info["exit_code"] = code if code is None or isinstance(code, (int, str)) else str(code)
    return info


class Harness:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = _Refs()
        self.ns: dict[str, Any] = {}
        self.code_lines: list[str] = []
        self.encoder = wire.Encoder(self._to_ref, convert=convert, max_nodes=LARGE_NODES)
        self._held: list[bytes] = []
        self._memory_error = self._frame(("raise", {"type": "MemoryError", "bases": ["MemoryError"],
                                                     "message": "", "frames": [], "omitted": 0, "exit": False}))

    # -- messages --------------------------------------------------------------------------------------------
    def _to_ref(self, obj: Any) -> tuple[bytes, Any]:
        if type(obj) is _AsRef:
            obj = obj.obj
        return b"R", self.refs.add(obj)

    def _from_ref(self, tag: bytes, ident: Any) -> Any:
        if tag == b"R":
            number = ident[0]
            try:
                return self.refs.objects[number]
            except KeyError:
                raise NameError(f"unknown program object #{number}") from None
        if tag == b"M":  # a library object the tests pass (int, str.lower, math.sqrt...)
            module, _, qualname = ident.partition(":")
            obj: Any = builtins if module == "builtins" else __import__(module, fromlist=["_"])
            for part in qualname.split("."):
                obj = getattr(obj, part)
            return obj
        try:
            return self.ns[ident]
        except KeyError:
            raise NameError(f"name {ident!r} is not defined") from None

    def _frame(self, msg: Any) -> bytes:
        return self.encoder.encode(msg)

    def _send(self, msg: Any, *, hold: bool = False) -> None:
        """Send an answer; with ``hold`` keep it to send with the next ones (fewer wake-ups of the judge)."""
        _flush()
        try:
            value = msg[1] if msg[0] == "ok" else None
            if type(value) in (list, tuple, set, frozenset, dict) and len(value) > LARGE_NODES:
                raise wire.TooLarge("too many items")  # hash it without walking it first
            payload = self._frame(msg)
        except MemoryError:
            payload = self._memory_error
        except wire.TooLarge as exc:
            payload = self._large(msg, exc)
        self._held.append(payload)
        if not hold:
            self._release()

    def _release(self) -> None:
        if self._held:
            frames, self._held = self._held, []
            wire.send_frames(self.fd, frames)

    def _large(self, msg: Any, exc: Exception) -> bytes:
        """An answer too large to send: its structural hash, which the judge compares with its own."""
        if msg[0] == "ok":
            value = convert_deep(msg[1])
            try:
                digest = wire.structural_hash(value)
                return self._frame(("ok", wire.Large(digest, len(value) if hasattr(value, "__len__") else 0,
                                                     type(value).__name__)))
            except MemoryError:
                return self._memory_error
            except (TypeError, RecursionError):
                pass
        return self._frame(("raise", self._info(exc, "ValueError", f"the value is too large to return: {exc}")))

    def _info(self, exc: BaseException, type_name: str | None = None, message: str | None = None) -> dict:
        try:
            info = exception_info(exc, self.code_lines)
        except MemoryError:
            info = {"type": "MemoryError", "bases": ["MemoryError"], "message": "", "frames": [], "omitted": 0,
                    "exit": False}
        if type_name:
            info.update(type=type_name, bases=[type_name, "Exception", "BaseException"], exit=False)
        if message is not None:
            info["message"] = message
        return info

    # -- the program -----------------------------------------------------------------------------------------
    def load(self, prefix: str | bytes | None, code: str, setup_imports: str | bytes | None,
             names: list[str] | None = None) -> None:
        """Run the problem's prefix, the program, then the setup's import lines (the trusted parts come
        compiled, as marshalled code, from the executor). ``names``: the globals the tests may use (None:
        all)."""
        self.code_lines = code.splitlines()
        ns: dict[str, Any] = {"__name__": "solution", "__builtins__": builtins, "__doc__": None}
        self.ns = ns
        try:
            if prefix:
                # the prelude, compiled by the executor (marshalled code) or given as text
                exec(_loads(prefix) if isinstance(prefix, bytes) else compile(prefix, PREFIX, "exec"), ns)  # noqa: S102, S302
            exec(compile(code, SOLUTION, "exec", dont_inherit=True), ns)  # noqa: S102 - running it is the point
            if setup_imports:
                exec(_loads(setup_imports) if isinstance(setup_imports, bytes)  # noqa: S102, S302
                     else compile(setup_imports, SETUP, "exec"), ns)
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too
            self._send(("loaderr", self._info(exc)))
            return
        self._send(("loaded", self.snapshot(names)), hold=bool(_select([self.fd], [], [], 0)[0]))

    def snapshot(self, names: list[str] | None = None) -> list[list[Any]]:
        """[name, kind, payload] for each global the tests may use: module (its name), value (plain data),
        large (plain data too large to send with the others: the judge asks for it) or object. Its size never
        decides a verdict: SNAPSHOT_NODES values in all, then only kinds."""
        out = []
        small = wire.Encoder(_no_ref, convert=convert, max_nodes=SNAPSHOT_VALUE_NODES)
        budget = SNAPSHOT_NODES
        wanted = None if names is None else set(names)
        for name, value in list(self.ns.items()):
            if not isinstance(name, str) or (name.startswith("__") and name.endswith("__")) \
                    or (wanted is not None and name not in wanted):
                continue
            if len(out) >= SNAPSHOT_NAMES:
                break
            if isinstance(value, type(sys)):
                out.append([name, "module", str(getattr(value, "__name__", ""))])
                continue
            try:
                small.max_nodes = min(SNAPSHOT_VALUE_NODES, budget)
                small.encode(value)
                budget -= small._nodes
                out.append([name, "value", value])
            except wire.TooLarge:
                out.append([name, "large", type(value).__name__])
            except BaseException:  # noqa: BLE001 - not plain, or a hostile __eq__/__iter__
                out.append([name, "object", type(value).__name__])
        return out

    # -- requests --------------------------------------------------------------------------------------------
    def batch(self, calls: list[Any]) -> None:
        """Calls the judge knows it will make (a test's ``f(<literals>)``): made in order, one answer each. The
        answers of a quick batch go out in one write; once the batch has run for HOLD_S, each answer goes out
        as soon as it is ready, so a call that never returns loses no earlier answer."""
        started = _monotonic()
        for target, args, kwargs in calls:
            if self._held and _monotonic() - started > HOLD_S:
                self._release()
            try:
                if isinstance(target, str):
                    try:
                        fn = self.ns[target]
                    except KeyError:
                        raise NameError(f"name {target!r} is not defined") from None
                else:
                    fn = target
                value = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001
                self._send(("raise", self._info(exc)), hold=True)
                continue
            self._send(("ok", value), hold=True)
        self._release()

    def handle(self, msg: Any) -> Any:
        op = msg[0]
        if op == "call":
            return msg[1](*msg[2], **msg[3])
        if op == "getattr":
            return getattr(msg[1], msg[2])
        if op == "setattr":
            setattr(msg[1], msg[2], msg[3])
            return None
        if op == "getitem":
            return msg[1][msg[2]]
        if op == "len":
            return len(msg[1])
        if op == "iter":
            return _AsRef(iter(msg[1]))
        if op == "next":
            it = msg[1]
            items = []
            for _ in range(int(msg[2])):
                try:
                    items.append(next(it))
                except StopIteration:
                    return [items, True]
            return [items, False]
        if op == "value":  # a global the snapshot left out (large): plain data, hashed or a reference
            return msg[1]
        if op == "drop":
            for number in msg[1]:
                self.refs.objects.pop(number, None)
            return None
        raise ValueError(f"unknown request {op!r}")

    def serve(self) -> None:
        fd = self.fd
        while True:
            try:
                buf = wire.recv_frame(fd)
            except (wire.Closed, OSError):
                _flush()
                _exit(0)
            try:
                msg = wire.decode(buf, self._from_ref)
            except BaseException as exc:  # noqa: BLE001 - an unknown name or object
                self._send(("raise", self._info(exc)))
                continue
            if msg[0] == "load":
                self.load(msg[1], msg[2], msg[3], msg[4] if len(msg) > 4 else None)
                continue
            if msg[0] == "batch":
                self.batch(msg[1])
                continue
            try:
                value = self.handle(msg)
            except BaseException as exc:  # noqa: BLE001
                self._send(("raise", self._info(exc)))
                continue
            self._send(("ok", value))


class _AsRef:
    """Marks a value that must travel as a reference even if it is plain (an iterator over a list...)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


def _no_ref(obj: Any) -> tuple[bytes, Any]:
    raise TypeError("not plain")


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001, S110 - a program may have replaced or closed its streams
            pass


def make_stdio() -> tuple[Any, Any, Any]:
    """Text streams on fds 0-2 (in a candidate's process: /dev/null and the memfds the judge reads)."""
    return (io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace"),
            io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace"),
            io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                             write_through=True))


_prepared: tuple[Any, Harness] | None = None


def prepare(fd: int = 3) -> None:
    """In the zygote, before any fork: build the streams and the harness every candidate's process starts with
    (they only hold descriptor numbers), and run the harness once on a throwaway program so the code paths are
    warm (a fork then copies fewer pages)."""
    global _prepared
    import socket

    a, b = socket.socketpair()
    try:
        for k in range(3):
            h = Harness(b.fileno())
            h.load("import math", f"class K:\n    pass\ndef f(x=(1, 2.5, 'x')):\n    return {{'a': [x, None]}} # {k}\n",
                   "import math")
            h.batch([("f", ([1, 2], ), {}), ("K", (), {}), ("missing", (), {})])
            try:
                raise ValueError("warm")
            except ValueError as exc:
                h._info(exc)
    finally:  # the answers written to ``a`` are small and simply dropped
        a.close()
        b.close()
    _prepared = (make_stdio(), Harness(fd))


def main(fd: int) -> None:
    """Entry point in the isolated child; never returns."""
    if _prepared is not None and _prepared[1].fd == fd:
        stdio, harness = _prepared
    else:
        stdio, harness = make_stdio(), Harness(fd)
    sys.stdin, sys.stdout, sys.stderr = stdio
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = stdio
    sys.argv = ["solution"]
    try:
        harness.serve()
    finally:
        _flush()
        _exit(0)
