"""What crosses between a candidate's process and its judge: length-prefixed frames of plain data.

Plain data is None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset and any nesting
of these (complex because MBPP's expected values use it).
Decoding never runs code and builds only objects of those exact builtin types, so a value that comes back from
a candidate compares, hashes and prints with trusted code. Anything else travels as a *reference*: a number
naming an object that stays in the candidate's process (the judge can call it, read attributes, iterate it,
but never compare it or ask its truth value).
"""

from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Callable
from typing import Any

MAX_FRAME = 256 << 20  # one message; a bigger one is a protocol violation
MAX_NODES = 5_000_000  # values in one message
LARGE_FRAME = 1 << 20  # FrameReader reads a frame this large into a buffer of its own

_I32 = struct.Struct(">I")
_Q = struct.Struct(">q")
_UQ = struct.Struct(">Q")
_D = struct.Struct(">d")


class WireError(Exception):
    """A malformed, oversized or truncated message."""


class TooLarge(WireError):
    def __init__(self, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size  # of the frame refused, when a frame's length was over the limit


class OverBudget(TooLarge):
    """More than a receiver allows in all (the judge's caps on what one program may make it hold)."""


class Closed(WireError):
    """The other side closed the connection."""


class Timeout(WireError):
    pass


# -- framing -------------------------------------------------------------------------------------------------
def send_frame(fd: int, payload: bytes, *, _write=os.write) -> None:
    if len(payload) > MAX_FRAME:
        raise TooLarge(f"message of {len(payload)} bytes is over the {MAX_FRAME} byte limit")
    data = memoryview(_I32.pack(len(payload)) + payload)
    while data:
        n = _write(fd, data)
        data = data[n:]


def send_frames(fd: int, payloads: list[bytes], *, _write=os.write) -> None:
    """Several frames in one write."""
    if len(payloads) == 1:
        send_frame(fd, payloads[0])
        return
    for p in payloads:
        if len(p) > MAX_FRAME:
            raise TooLarge(f"message of {len(p)} bytes is over the {MAX_FRAME} byte limit")
    data = memoryview(b"".join(_I32.pack(len(p)) + p for p in payloads))
    while data:
        n = _write(fd, data)
        data = data[n:]


def _read_exact(fd: int, n: int, deadline: float | None, _read=os.read) -> bytes:
    chunks = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("deadline passed")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                raise Timeout("deadline passed")
        b = _read(fd, min(n, 1 << 20))
        if not b:
            raise Closed("connection closed")
        chunks.append(b)
        n -= len(b)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def recv_frame(fd: int, deadline: float | None = None, *, max_size: int = MAX_FRAME) -> bytes:
    (n,) = _I32.unpack(_read_exact(fd, 4, deadline))
    if n > max_size:
        raise TooLarge(f"message of {n} bytes is over the {max_size} byte limit")
    return _read_exact(fd, n, deadline) if n else b""


class FrameReader:
    """``recv_frame`` through a buffer: frames sent together (a batch's answers) take one read."""

    def __init__(self, fd: int, *, max_size: int = MAX_FRAME) -> None:
        self.fd, self.max_size = fd, max_size
        self.buf = bytearray()
        self.pos = 0  # start of what is not yet returned

    def recv(self, deadline: float) -> bytes | bytearray:
        buf = self.buf
        while True:
            avail = len(buf) - self.pos
            if avail >= 4:
                (n,) = _I32.unpack_from(buf, self.pos)
                if n > self.max_size:
                    raise TooLarge(f"message of {n} bytes is over the {self.max_size} byte limit", n)
                if avail >= 4 + n:
                    start = self.pos + 4
                    self.pos = start + n
                    frame = bytes(buf[start:self.pos])
                    if self.pos == len(buf):
                        buf.clear()
                        self.pos = 0
                    return frame
                if n >= LARGE_FRAME:
                    return self._recv_large(n, deadline)
                want = 4 + n - avail
            else:
                want = 4 - avail
            if self.pos > len(buf) // 2:
                del buf[:self.pos]
                self.pos = 0
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise Timeout("deadline passed")
            chunk = os.read(self.fd, min(max(want, 1 << 16), 1 << 20))
            if not chunk:
                raise Closed("connection closed")
            buf += chunk

    def _recv_large(self, n: int, deadline: float) -> bytearray:
        """A large frame, read straight into a buffer of its size: the receiver then holds it once (no
        growing buffer, no copy of it)."""
        start = self.pos + 4
        frame = bytearray(n)
        got = len(self.buf) - start
        frame[:got] = self.buf[start:]
        self.buf.clear()
        self.pos = 0
        with memoryview(frame) as view:
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise Timeout("deadline passed")
                k = os.readv(self.fd, [view[got:]])
                if not k:
                    raise Closed("connection closed")
                got += k
        return frame


# -- plain-data codec ----------------------------------------------------------------------------------------
PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)


class Encoder:
    """Encode a value. ``to_ref(obj)`` turns a non-plain object into ``(b"R", id)`` or ``(b"G", name)``, or raises
    TypeError; ``convert`` (candidate side) maps subclasses of plain types to their plain contents first."""

    def __init__(self, to_ref: Callable[[Any], tuple[bytes, Any]], *, convert: Callable[[Any], Any] | None = None,
                 max_nodes: int = MAX_NODES) -> None:
        self.to_ref = to_ref
        self.convert = convert
        self.max_nodes = max_nodes

    def encode(self, value: Any) -> bytes:
        out = bytearray()
        self._nodes = 0
        self._path: set[int] = set()
        self._enc(value, out)
        return bytes(out)

    def _ref(self, v: Any, out: bytearray) -> None:
        tag, ident = self.to_ref(v)
        if tag == b"R":
            number, type_name = ident
            raw = type_name.encode("utf-8", "surrogatepass")[:200]
            out += b"R"
            out += _UQ.pack(number)
        else:  # G: a global of the program by name; M: "module:qualname" of a library object
            raw = ident.encode("utf-8", "surrogatepass")
            out += tag
        out += _I32.pack(len(raw))
        out += raw

    def _enc(self, v: Any, out: bytearray) -> None:
        self._nodes += 1
        if self._nodes > self.max_nodes:
            raise TooLarge(f"value has more than {self.max_nodes} parts")
        t = type(v)
        if t is int:
            if -(1 << 63) <= v < (1 << 63):
                out += b"i"
                out += _Q.pack(v)
            else:
                raw = v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
                out += b"I"
                out += _I32.pack(len(raw))
                out += raw
        elif t is str:
            raw = v.encode("utf-8", "surrogatepass")
            out += b"s"
            out += _I32.pack(len(raw))
            out += raw
        elif t is float:
            out += b"d"
            out += _D.pack(v)
        elif v is None:
            out += b"N"
        elif v is True:
            out += b"T"
        elif v is False:
            out += b"F"
        elif t is list or t is tuple or t is set or t is frozenset:
            key = id(v)
            if key in self._path:  # a cycle: the container itself stays behind as a reference
                self._ref(v, out)
                return
            self._path.add(key)
            out += b"L" if t is list else b"U" if t is tuple else b"S" if t is set else b"Z"
            out += _I32.pack(len(v))
            enc = self._enc
            for item in v:
                enc(item, out)
            self._path.discard(key)
        elif t is dict:
            key = id(v)
            if key in self._path:
                self._ref(v, out)
                return
            self._path.add(key)
            out += b"D"
            out += _I32.pack(len(v))
            for k, item in v.items():
                self._enc(k, out)
                self._enc(item, out)
            self._path.discard(key)
        elif t is bytes:
            out += b"b"
            out += _I32.pack(len(v))
            out += v
        elif t is complex:
            out += b"c"
            out += _D.pack(v.real)
            out += _D.pack(v.imag)
        elif t is Large:
            raw = v.type_name.encode("utf-8", "replace")[:100]
            out += b"H"
            out += _Q.pack(v.digest)
            out += _UQ.pack(v.length)
            out += _I32.pack(len(raw))
            out += raw
        elif self.convert is not None:
            c = self.convert(v)
            if c is NOT_PLAIN:
                self._ref(v, out)
            else:
                self._enc(c, out)
        else:
            self._ref(v, out)


NOT_PLAIN = object()

_BATCH_HEAD = b"U" + _I32.pack(2) + b"s" + _I32.pack(5) + b"batch" + b"L"


def batch_of(calls: list[bytes]) -> bytes:
    """The message ``("batch", [call, ...])`` from calls encoded one by one."""
    return _BATCH_HEAD + _I32.pack(len(calls)) + b"".join(calls)


_ATOMS = (str, int, float, bool, bytes, complex, type(None))


def structural_hash(v: Any) -> int:
    """A hash that equal plain values share (``1 == 1.0 == True`` included; a list and a tuple with the same
    items differ), for values too large to send: both sides hash, the judge compares. Raises TypeError for
    what is not plain data."""
    t = type(v)
    if t in _ATOMS:
        return hash(v)
    if t is list or t is tuple:
        try:
            inner = hash(tuple(v))  # at C speed when every item is hashable (strings, numbers, tuples...)
        except TypeError:
            inner = hash(tuple(structural_hash(x) for x in v))
        return hash((t.__name__, inner))
    if t is set or t is frozenset:
        try:
            inner = hash(frozenset(v))
        except TypeError:
            inner = hash(frozenset(structural_hash(x) for x in v))
        return hash(("set", inner))
    if t is dict:
        return hash(("dict", frozenset((structural_hash(k), structural_hash(x)) for k, x in v.items())))
    raise TypeError(f"{t.__name__} is not plain data")


class Large:
    """A value too large to send (more than MAX_NODES parts): its structural hash, type name and length."""

    __slots__ = ("digest", "length", "type_name")

    def __init__(self, digest: int, length: int, type_name: str) -> None:
        self.digest, self.length, self.type_name = digest, length, type_name


def _need(pos: int, n: int, end: int) -> None:
    if pos + n > end:
        raise WireError("truncated value")


def _sized(buf: bytes, mv: memoryview, pos: int, end: int) -> tuple[memoryview, int]:
    """The bytes after the 4-byte length at ``pos`` (as many as it says), and the position after them."""
    _need(pos, 4, end)
    (n,) = _I32.unpack_from(buf, pos)
    pos += 4
    _need(pos, n, end)
    return mv[pos:pos + n], pos + n


def _count(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """The item count of a container at ``pos`` (each item takes a byte at least), and the position after."""
    _need(pos, 4, end)
    (n,) = _I32.unpack_from(buf, pos)
    pos += 4
    if n > end - pos:
        raise WireError(f"truncated {what}")
    return n, pos


def _decode_ref(tag: int, buf: bytes, mv: memoryview, pos: int, end: int,
                from_ref: Callable[[bytes, Any], Any]) -> tuple[Any, int]:
    """What ``from_ref`` makes of a reference: H (a value too large to send: its hash, length and type name),
    R (an object of the program: its number and type name), G or M (a name)."""
    if tag == 0x48:  # H
        _need(pos, 20, end)
        digest = _Q.unpack_from(buf, pos)[0]
        length = _UQ.unpack_from(buf, pos + 8)[0]
        raw, pos = _sized(buf, mv, pos + 16, end)
        return from_ref(b"H", (digest, length, str(raw, "utf-8", "replace"))), pos
    if tag == 0x52:  # R
        _need(pos, 12, end)
        number = _UQ.unpack_from(buf, pos)[0]
        raw, pos = _sized(buf, mv, pos + 8, end)
        return from_ref(b"R", (number, str(raw, "utf-8", "replace"))), pos
    raw, pos = _sized(buf, mv, pos, end)  # G M
    return from_ref(bytes((tag,)), str(raw, "utf-8", "surrogatepass")), pos


def decode(buf: bytes, from_ref: Callable[[bytes, Any], Any], *, max_nodes: int = MAX_NODES,
           count: list[int] | None = None) -> Any:
    """Decode one value; the whole buffer must be consumed. Raises WireError on anything malformed.
    ``count``: a running total of the values decoded, shared across calls; ``max_nodes`` then caps the total
    (OverBudget past it)."""
    mv = memoryview(buf)
    end = len(buf)
    if count is None:
        count = [0]

    def need(pos: int, n: int) -> None:
        if pos + n > end:
            raise WireError("truncated value")

    def dec(pos: int) -> tuple[Any, int]:
        count[0] += 1
        if count[0] > max_nodes:
            raise OverBudget(f"more than {max_nodes} values")
        need(pos, 1)
        tag = buf[pos]
        pos += 1
        if tag == 0x69:  # i
            need(pos, 8)
            return _Q.unpack_from(buf, pos)[0], pos + 8
        if tag == 0x73:  # s
            need(pos, 4)
            (n,) = _I32.unpack_from(buf, pos)
            pos += 4
            need(pos, n)
            return str(mv[pos:pos + n], "utf-8", "surrogatepass"), pos + n
        if tag == 0x64:  # d
            need(pos, 8)
            return _D.unpack_from(buf, pos)[0], pos + 8
        if tag == 0x4E:  # N
            return None, pos
        if tag == 0x54:  # T
            return True, pos
        if tag == 0x46:  # F
            return False, pos
        if tag in (0x4C, 0x55, 0x53, 0x5A):  # L U S Z
            n, pos = _count(buf, pos, end, "container")
            items = []
            append = items.append
            for _ in range(n):
                item, pos = dec(pos)
                append(item)
            if tag == 0x4C:
                return items, pos
            if tag == 0x55:
                return tuple(items), pos
            try:
                return (set(items) if tag == 0x53 else frozenset(items)), pos
            except TypeError as exc:
                raise WireError(f"unhashable set member: {exc}") from None
        if tag == 0x44:  # D
            n, pos = _count(buf, pos, end, "dict")
            d = {}
            for _ in range(n):
                k, pos = dec(pos)
                v, pos = dec(pos)
                try:
                    d[k] = v
                except TypeError as exc:
                    raise WireError(f"unhashable dict key: {exc}") from None
            return d, pos
        if tag == 0x62:  # b
            raw, pos = _sized(buf, mv, pos, end)
            return bytes(raw), pos
        if tag == 0x49:  # I
            raw, pos = _sized(buf, mv, pos, end)
            return int.from_bytes(raw, "big", signed=True), pos
        if tag == 0x63:  # c
            need(pos, 16)
            return complex(_D.unpack_from(buf, pos)[0], _D.unpack_from(buf, pos + 8)[0]), pos + 16
        if tag in (0x48, 0x52, 0x47, 0x4D):  # H R G M
            return _decode_ref(tag, buf, mv, pos, end, from_ref)
        raise WireError(f"unknown tag {tag!r}")

    try:
        value, pos = dec(0)
    except RecursionError:
        raise TooLarge("value is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise WireError(f"invalid text: {exc}") from None
    finally:
        # ``dec`` refers to itself: without this, the cycle keeps ``buf`` (a whole frame) alive until the
        # collector runs, and a stream of large answers piles their frames up.
        dec = None  # type: ignore[assignment]
    if pos != end:
        raise WireError("trailing bytes after value")
    return value
