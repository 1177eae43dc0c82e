"""Per-slot cgroups: a memory limit that counts everything a program's processes hold (SysV and POSIX shared
memory, its /tmp, pages no rlimit sees) and a process count, on cgroup v2 or v1 hosts.

cgroup v2 (one unified hierarchy; modern distributions and Docker default to it): the executor works in the
cgroup it was started in (``/proc/self/cgroup``). Controllers reach a child only when its parent enables them in
``cgroup.subtree_control``, and a cgroup other than the root that does so may hold no process itself (the "no
internal processes" rule): when the executor's cgroup holds processes (the executor, the worker that started it),
they are first moved into a leaf ``mucode-host`` of it, as container init systems do. The executor's subtree is
then ``<its cgroup>/mucode-<tag>`` (memory and pids enabled for its children) with one leaf per slot,
``slot<N>``, whose ``memory.max``, ``memory.swap.max`` (0), ``memory.oom.group`` (1: an out-of-memory kill takes
the program's whole process tree) and ``pids.max`` are set; a program's process joins its slot's leaf.

cgroup v1 (one hierarchy per controller): ``/sys/fs/cgroup/{memory,pids}/mucode/<tag>/slot<N>``.

A kill by the memory limit is counted in the slot's ``memory.events`` (v2) or ``memory.oom_control`` (v1)
``oom_kill`` line: the zygote reads it around each program, and the verdict says ``memory``.

The tag of an executor's cgroups names its pid namespace and its pid: an executor killed outright leaves them
behind, and the next one to start in the same pid namespace removes them (``sweep``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids")
HOST_LEAF = "mucode-host"
_V1_ROOTS = {"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"}


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, file system type, super options) of every mount, from /proc/self/mountinfo."""
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) >= 5 and len(rest) >= 3:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((point, rest[0], rest[2]))
    return out


def v2_home(mounts: list[tuple[str, str, str]] | None = None) -> Path | None:
    """The directory of this process's own cgroup in the cgroup2 hierarchy, or None without one."""
    point = next((p for p, fs, _ in (mounts if mounts is not None else _mounts()) if fs == "cgroup2"), None)
    if point is None:
        return None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rel = next((line[3:] for line in lines if line.startswith("0::")), None)
    if rel is None:
        return None
    home = Path(point, rel.lstrip("/"))
    return home if home.is_dir() else None


def remount_v2_writable() -> bool:
    """A container's /sys/fs/cgroup is a read-only mount of the cgroup2 hierarchy (container runtimes make it
    so with a read-only bind remount). With CAP_SYS_ADMIN the executor makes that mount writable in a mount
    namespace of its own: nothing changes for the container's other processes. True when it did."""
    point = next((p for p, fs, _ in _mounts() if fs == "cgroup2"), None)
    if point is None or os.access(point, os.W_OK) or os.geteuid() != 0:
        return False
    from app.sandbox import isolation

    isolation.unshare(isolation.CLONE_NEWNS)
    isolation.mount(None, "/", None, isolation.MS_REC | isolation.MS_PRIVATE)
    isolation.mount(None, point, None, isolation.MS_REMOUNT | isolation.MS_BIND | isolation.MS_NOSUID
                    | isolation.MS_NODEV | isolation.MS_NOEXEC)
    return os.access(point, os.W_OK)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass
class Detected:
    version: str | None  # "v2" | "v1" | None
    home: Path | None = None  # v2: the executor's cgroup
    why: str = ""  # why there is none (or why v2 was not taken)


def detect() -> Detected:
    """Which cgroup version can give each slot a memory and a process limit here (root only). v2 where its
    hierarchy offers the memory and pids controllers; else v1 where their hierarchies are writable (a hybrid
    host with those controllers on v1 ends up here)."""
    if os.geteuid() != 0:
        return Detected(None, why="not root")
    notes = []
    home = v2_home()
    if home is not None:
        offered = _read(home / "cgroup.controllers").split()
        missing = [c for c in CONTROLLERS if c not in offered]
        if not missing and os.access(home, os.W_OK):
            return Detected("v2", home)
        notes.append(f"cgroup v2 at {home}: " + (f"controllers {missing} not offered (bound to v1 or not "
                                                  "delegated)" if missing else "not writable"))
    else:
        notes.append("no cgroup v2 hierarchy")
    if all(os.access(p, os.W_OK) for p in _V1_ROOTS.values()):
        return Detected("v1", why="; ".join(notes))
    notes.append("no writable cgroup v1 memory and pids hierarchies")
    return Detected(None, why="; ".join(notes))


class SlotCgroups:
    """One executor's per-slot cgroups (made by ``make``, removed by ``remove``)."""

    def __init__(self, version: str, tag: str, home: Path | None = None) -> None:
        self.version = version
        self.tag = tag
        self.home = home
        self.base = Path(home, f"mucode-{tag}") if version == "v2" else None

    # -- paths -------------------------------------------------------------------------------------------
    def procs_files(self, slot: int) -> list[str]:
        """The cgroup.procs files a program's process writes "0" into to join its slot."""
        if self.version == "v2":
            return [str(self.base / f"slot{slot}" / "cgroup.procs")]
        return [f"{_V1_ROOTS[c]}/mucode/{self.tag}/slot{slot}/cgroup.procs" for c in CONTROLLERS]

    def oom_file(self, slot: int) -> str:
        if self.version == "v2":
            return str(self.base / f"slot{slot}" / "memory.events")
        return f"{_V1_ROOTS['memory']}/mucode/{self.tag}/slot{slot}/memory.oom_control"

    def usage_file(self, slot: int) -> str:
        if self.version == "v2":
            return str(self.base / f"slot{slot}" / "memory.current")
        return f"{_V1_ROOTS['memory']}/mucode/{self.tag}/slot{slot}/memory.usage_in_bytes"

    def dirs(self) -> list[Path]:
        if self.version == "v2":
            return [self.base]
        return [Path(_V1_ROOTS[c], "mucode", self.tag) for c in CONTROLLERS]

    # -- life cycle ------------------------------------------------------------------------------------
    def make(self, slots: int, memory_bytes: int, pids: int) -> None:
        if self.version == "v2":
            self._make_v2(slots, memory_bytes, pids)
        else:
            self._make_v1(slots, memory_bytes, pids)

    def _make_v1(self, slots: int, memory_bytes: int, pids: int) -> None:
        for slot in range(slots):
            mem = Path(_V1_ROOTS["memory"], "mucode", self.tag, f"slot{slot}")
            pid = Path(_V1_ROOTS["pids"], "mucode", self.tag, f"slot{slot}")
            mem.mkdir(parents=True, exist_ok=True)
            pid.mkdir(parents=True, exist_ok=True)
            (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
            with contextlib.suppress(OSError):  # no swap on most hosts; where there is, cap memory+swap too
                (mem / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            (pid / "pids.max").write_text(str(pids))

    def _make_v2(self, slots: int, memory_bytes: int, pids: int) -> None:
        assert self.home is not None and self.base is not None
        enable_controllers(self.home)
        self.base.mkdir(exist_ok=True)
        (self.base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        for slot in range(slots):
            leaf = self.base / f"slot{slot}"
            leaf.mkdir(exist_ok=True)
            (leaf / "memory.max").write_text(str(memory_bytes))
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                with contextlib.suppress(FileNotFoundError):  # no swap accounting / an old kernel
                    (leaf / name).write_text(value)
            (leaf / "pids.max").write_text(str(pids))

    def sweep(self) -> list[str]:
        """Remove what executors of this pid namespace left behind when they died without cleaning up (their
        tag names the namespace and their pid, and the pid is gone); a cgroup that still holds a process stays.
        Returns the directories removed."""
        parents = [self.base.parent] if self.version == "v2" else [Path(_V1_ROOTS[c], "mucode")
                                                                   for c in CONTROLLERS]
        prefix = "mucode-" if self.version == "v2" else ""
        ns = executor_tag().split(".")[0]
        removed = []
        for parent in parents:
            if not parent.is_dir():
                continue
            for d in parent.iterdir():
                tag = d.name[len(prefix):] if d.name.startswith(prefix) else ""
                their_ns, _, pid = tag.partition(".")
                if their_ns != ns or not pid.isdigit() or tag == self.tag or Path("/proc", pid).exists():
                    continue
                if SlotCgroups(self.version, tag, self.home).remove():
                    removed.append(str(d))
        return removed

    def remove(self) -> bool:
        """Remove the slots' cgroups (those whose processes are gone); True when nothing is left."""
        left = False
        for base in self.dirs():
            if not base.is_dir():
                continue
            for d in sorted(base.glob("slot*"), reverse=True):
                try:
                    d.rmdir()
                except OSError:
                    left = True
            try:
                base.rmdir()
            except OSError:
                left = True
        return not left


def executor_tag(pid: int | None = None) -> str:
    """An executor's cgroups are named after its pid namespace and its pid (``sweep`` tells a dead one's)."""
    return f"{os.stat('/proc/self/ns/pid').st_ino}.{pid or os.getpid()}"


def enable_controllers(home: Path, controllers: tuple[str, ...] = CONTROLLERS, attempts: int = 5) -> None:
    """Enable ``controllers`` for the children of ``home``. A non-root cgroup may do so only while it holds no
    process: on EBUSY, its processes move into the leaf ``mucode-host`` and the write is tried again (a process
    started meanwhile makes another round)."""
    ctl = home / "cgroup.subtree_control"
    want = " ".join(f"+{c}" for c in controllers)
    for _ in range(attempts):
        if all(c in _read(ctl).split() for c in controllers):
            return
        try:
            ctl.write_text(want)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
        leaf = home / HOST_LEAF
        leaf.mkdir(exist_ok=True)
        for pid in _read(home / "cgroup.procs").split():
            try:
                (leaf / "cgroup.procs").write_text(pid)
            except OSError as exc:
                if exc.errno != errno.ESRCH:  # gone meanwhile
                    raise
    ctl.write_text(want)  # the last try: its error is the one reported


def oom_kills(text: str) -> int:
    """The ``oom_kill`` count of a memory.events (v2) or memory.oom_control (v1) file's text."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


def read_oom_kills(fd: int) -> int:
    try:
        return oom_kills(os.pread(fd, 4096, 0).decode())
    except OSError:
        return 0


def read_usage(fd: int) -> int:
    try:
        return int(os.pread(fd, 64, 0))
    except (OSError, ValueError):
        return 0


def settle(usage_fd: int, threshold: int, timeout_s: float = 1.0, poll_s: float = 0.005) -> int:
    """Wait until a slot's memory use falls to ``threshold`` and return it (or what is left at ``timeout_s``).

    A program's shared memory and /tmp are freed with its IPC and mount namespaces, which the kernel tears down
    asynchronously after its last process is gone (about 0.1 s for 1 GiB): without the wait, the slot's next
    program would start with the last one's charge against its limit and could be killed for memory it never
    used. What stays longer (page cache) is reclaimable and does not count against the next program."""
    used = read_usage(usage_fd)
    if used <= threshold:
        return used
    deadline = time.monotonic() + timeout_s
    while used > threshold and time.monotonic() < deadline:
        time.sleep(poll_s)
        used = read_usage(usage_fd)
    return used
