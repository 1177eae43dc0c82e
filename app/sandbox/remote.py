"""The judge's side of the candidate's process: the connection to it and the proxies for its objects.

Each name of the candidate's program that the tests read is a :class:`ProgramObject` in the judge: calling it,
reading an attribute or iterating it is a request to the candidate's process, whose answer comes back as plain
data (``app.sandbox.wire``) or as another proxy; an exception it raised comes back as its description, and is
raised in the judge as a builtin exception of the same kind (``remote_exception``). So the test code, the
expected values and the comparisons all stay in the judge, where the candidate cannot reach; the candidate's
process only ever sees the arguments the tests pass to its functions. :class:`Conn` also caps what the
program's answers may make the judge hold, and sends a test loop's calls ahead of it
(``app.sandbox.prefetch``).
"""

from __future__ import annotations

import builtins
import contextlib
import re
import sys
import types
from collections import deque
from typing import Any

from app.sandbox import wire
from app.sandbox.child import convert

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
# A loop's calls sent ahead, at most: well within a socket's buffer (which also counts each message's
# overhead, about 1 KiB), so that sending never waits for the program.
STREAM_BYTES = 64 << 10
STREAM_CALLS = 32
NOT_PLAIN_HINT = ("only None, bool, int, float, complex, str, bytes, list, tuple, dict, set and frozenset "
                  "values (and nestings of them) can be compared")
_SAFE_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) - {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "webbrowser", "pydoc", "ensurepip",
    "venv", "lib2to3", "pdb", "code", "pty", "tty", "curses", "__main__",
}


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


class Deadline(BaseException):
    """The judge's time limit for one program ran out (raised by its alarm, wherever the tests were)."""


def clean_info(raw: Any) -> dict[str, Any]:
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
        "bases": [b for b in d.get("bases", []) if isinstance(b, str)][:20]
        if isinstance(d.get("bases"), list) else [],
        "message": s(d.get("message"))[:2000],
        "frames": frames[:20],
        "omitted": d["omitted"] if isinstance(d.get("omitted"), int) else 0,
        "exit": d.get("exit") is True,
    }
    syn = d.get("syntax")
    if isinstance(syn, list) and len(syn) == 3:
        info["syntax"] = [syn[0] if isinstance(syn[0], int) else None,
                          syn[1] if isinstance(syn[1], int) else None, s(syn[2])[:200]]
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
            except Exception:  # noqa: BLE001, S112 - UnicodeDecodeError needs 5 arguments: try its parent
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
        raise TypeError(f"the program's {self.type_name} of {self.length} items is too large to inspect; "
                        "only == and len() work on it")

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

    # -- streams: the calls a test loop will make, ``fn(*item) for item in items``, sent ahead of it ---------
    def map_start(self, fn_thunk: Any, items_thunk: Any, star: bool, iterable: Any) -> Any:
        """At the start of a loop rewritten by ``prefetch.map_loops``: when ``fn`` is the program's and
        ``items`` a list, its calls start going out now; the loop itself is unchanged (``iterable`` is
        returned)."""
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
        """Send the next calls, as one batch: up to the window (small at first, so a program that fails
        its first input wastes little; doubled by each answer) and STREAM_BYTES in flight (a large call goes
        alone, to a program waiting for it)."""
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
                except (ProgramGone, Deadline):
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
        except Deadline:
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
            info = clean_info(value)
            if info["type"] == "MemoryError":
                self.memory_error = True
            raise remote_exception(info)
        return reply


class _Stream:
    __slots__ = ("fn", "items", "limit", "next_call", "sent", "sizes", "star", "used", "window")

    def __init__(self, fn: ProgramObject, items: list[Any] | tuple[Any, ...], star: bool) -> None:
        self.fn, self.items, self.star = fn, items, star
        self.limit = len(items)  # calls that can be sent ahead: up to the first whose arguments are not plain
        self.sent = 0
        self.used = 0
        self.sizes: deque[int] = deque()  # bytes of each request sent and not yet answered
        self.next_call: bytes | None = None  # encoded, waiting for room
        self.window = 2  # calls in flight at most


def library_name(obj: Any) -> str | None:
    """``module:qualname`` when ``obj`` is a class or function of the standard library (``int``,
    ``str.lower``, ``math.sqrt``): the tests may pass those to a program, which finds its own copy by that
    name."""
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


def module_for(name: str) -> Any:
    """The judge's own copy of a module the program imported: only one the judge has already loaded, of the
    standard library or NumPy (never imported on the program's word: importing runs the module's code here,
    and a few, ``unittest.__main__``, end the process)."""
    mod = sys.modules.get(name)
    if isinstance(mod, types.ModuleType) and name.split(".")[0] in _SAFE_STDLIB | {"numpy"}:
        return mod
    return None
