"""The executor: a long-lived server process that runs batches of programs, each in its own isolated process.

Process tree (all started from ``Sandbox``; none holds a database connection or any credential)::

    Celery worker / CLI --(socketpair: pickled batches)--> executor (python -m app.sandbox.executor)
                                                             | fork at start-up, before any job exists
                                                             v
                                                           zygote (stdlib imported; the empty network
                                                             |     namespaces, the read-only root; reaps
                                                             |     everything)
                                                             +--fork at start-up--> numpy zygote (the same,
                                                             |                       NumPy imported too)
                                  fork once per slot  <------+------>  fork once per program (raw fork, by
                                           v                                     v  either zygote)
                          judge (one per slot, long-lived:        candidate's process (pid 1 of its own pid
                          runs the tests; trusted)     <-socket->  namespace; own network, mount and IPC
                                                                   namespaces; the slot's uid; rlimits)

The zygotes never receive a job, so a candidate's process (a copy of one) holds no test, no expected value and
no other program. A judge asks a zygote for the next candidate process as soon as the previous one is reaped,
so the fork and the isolation overlap with the executor's bookkeeping. A program whose code (or the suite's
code that runs in its process) names NumPy gets its process from the numpy zygote; every other program from
the main one, which is a third smaller: the cost of a fork here (page tables, copy-on-write faults, unmapping at
exit) grows with the memory the zygote has touched, and NumPy is most of it.

Candidate processes are made with libc's ``fork()`` directly (the zygote is single-threaded and holds the
GIL across the call), skipping CPython's after-fork hooks (``threading`` and ``random`` re-initialisation):
that halves the cost of a fork here, and leaves every candidate the same (seeded) random state.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import marshal  # noqa: F401 - imported before the zygote forks
import os
import pickle
import select
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict
from typing import Any

from app.sandbox import cgroups, child, isolation, judge, remote, wire
from app.sandbox import feedback as _feedback  # noqa: F401 - preloaded for the forks
from app.sandbox import prefetch as _prefetch  # noqa: F401
from app.sandbox import verdict as _verdict  # noqa: F401
from app.sandbox.suite import compile_suite
from app.sandbox.types import Limits

# Imported in the zygote so that no program (and no judge) pays for them.
PREIMPORT = (
    "abc", "array", "ast", "base64", "binascii", "bisect", "calendar", "cmath", "codecs", "collections",
    "collections.abc", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum",
    "fractions", "functools", "hashlib", "heapq", "inspect", "io", "itertools", "json", "keyword", "math",
    "numbers", "operator", "pprint", "queue", "random", "re", "statistics", "string", "struct", "textwrap",
    "shutil", "threading", "time", "traceback", "types", "typing", "unicodedata", "uuid", "warnings", "weakref",
    "zlib",
)
OPTIONAL_PREIMPORT = ("numpy",)

UID_BASE = 100_000
MAX_SLOTS = 64
HARD_GRACE_S = 5.0  # beyond the program's own time limit before the executor kills a judge
SETUP_FAILED = judge.SETUP_FAILED  # exit status of a candidate process that could not isolate itself
SUITE_CACHE = 64  # suites a judge keeps compiled
PREPARED_CACHE = 2048  # suites the executor keeps compiled
QUEUE_DEPTH = 2  # jobs a judge holds at once

_pylibc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held across fork()
_pylibc.fork.restype = ctypes.c_int


def raw_fork() -> int:
    pid = _pylibc.fork()
    if pid < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fork: {os.strerror(e)}")
    return pid


def _uid_base() -> int:
    """Per-executor uid range, so two executors on one host never share a slot's uid (RLIMIT_NPROC is per uid)."""
    return UID_BASE + (os.getpid() % 1_000_000) * MAX_SLOTS


def _close_all_but(keep: set[int]) -> None:
    lo = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 16)


# -- zygote ----------------------------------------------------------------------------------------------------
def slot_memory_bytes(limits: Limits) -> int:
    """A slot cgroup's memory limit: the program's own, its /tmp, and room for the interpreter's pages."""
    return (limits.memory_mb + limits.tmp_mb + 256) << 20


class ZygoteConfig:
    def __init__(self, *, slots: int, strong: bool, ipcns: bool, limits: Limits, uid_base: int,
                 slot_cgroups: cgroups.SlotCgroups | None, preimport_numpy: bool = True, send_ahead: bool = True,
                 seccomp: Any = None) -> None:
        self.slots = slots
        self.strong = strong
        self.ipcns = ipcns
        self.limits = limits
        self.uid_base = uid_base
        self.slot_cgroups = slot_cgroups
        self.preimport_numpy = preimport_numpy
        self.send_ahead = send_ahead
        self.seccomp = seccomp  # the programs' compiled system call filter (None: none)
        self.tmp_binds: list[tuple[str, str]] = []  # set by the root: the interpreter's directories under /tmp
        self.netns_fds: list[int] = []
        self.cgroup_fds: list[list[int]] = []  # per slot: open cgroup.procs files (v1: memory, pids; v2: one)
        self.oom_fds: list[int] = []  # per slot: its open oom_kill counter (memory.events or memory.oom_control)
        self.usage_fds: list[int] = []  # per slot: its open memory use (memory.current or memory.usage_in_bytes)
        # A slot's next program starts once the last one's memory is down to this (see cgroups.settle).
        self.settle_bytes = slot_memory_bytes(limits) // 16
        self.pidns_fd: int | None = None
        self.base_vm = 0


def _preimport(numpy: bool = True) -> list[str]:
    failed = []
    for name in PREIMPORT + (OPTIONAL_PREIMPORT if numpy else ()):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - numpy may be absent
            failed.append(name)
    return failed


def _make_namespaces(cfg: ZygoteConfig) -> None:
    """One empty network namespace per slot (a slot runs one program at a time) and one for the zygotes and the
    judges. Each zygote then moves itself into a mount namespace of its own whose root is the minimal read-only
    tree (``isolation.make_root_namespace``), so the judges and every program process start there (no capability
    beyond SYS_ADMIN is needed: no setns into a mount namespace, no chroot)."""
    for _ in range(cfg.slots):
        isolation.unshare(isolation.CLONE_NEWNET)
        cfg.netns_fds.append(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
    isolation.unshare(isolation.CLONE_NEWNET)  # the zygote and the judges: no network either
    cfg.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    if cfg.slot_cgroups is not None:  # opened now: the cgroup file system is not in the sandbox's root
        for slot in range(cfg.slots):
            cfg.cgroup_fds.append([os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                                   for path in cfg.slot_cgroups.procs_files(slot)])
            cfg.oom_fds.append(os.open(cfg.slot_cgroups.oom_file(slot), os.O_RDONLY | os.O_CLOEXEC))
            cfg.usage_fds.append(os.open(cfg.slot_cgroups.usage_file(slot), os.O_RDONLY | os.O_CLOEXEC))


def _child_setup(slot: int, cfg: ZygoteConfig, workdir: str | None) -> isolation.ChildSetup:
    lim = cfg.limits
    return isolation.ChildSetup(
        strong=cfg.strong,
        uid=cfg.uid_base + slot,
        gid=cfg.uid_base + slot,
        netns_fd=cfg.netns_fds[slot] if cfg.strong else None,
        ipcns=cfg.ipcns,
        cgroups=cfg.cgroup_fds[slot] if cfg.cgroup_fds else [],
        cpu_s=lim.cpu_s,
        address_space=lim.memory_mb << 20,
        nproc=lim.nproc,
        fsize=lim.output_bytes,
        nofile=lim.nofile,
        tmp_bytes=lim.tmp_mb << 20,
        workdir=workdir,
        base_vm=cfg.base_vm,
        seccomp=cfg.seccomp,
        tmp_binds=cfg.tmp_binds,
    )


def _candidate_process(setup: isolation.ChildSetup, sock_fd: int, out_fd: int, err_fd: int) -> None:
    """In the fresh fork: put the descriptors in place, isolate, then serve the judge. Never returns."""
    try:
        import fcntl

        for fd in setup.cgroups:  # join the slot's cgroups first: everything after is accounted there
            os.write(fd, b"0")
        signal.set_wakeup_fd(-1)
        # Move what the setup needs above the descriptors about to be placed at 0-3.
        if setup.netns_fd is not None:
            setup.netns_fd = fcntl.fcntl(setup.netns_fd, fcntl.F_DUPFD_CLOEXEC, 100)
        out_hi = fcntl.fcntl(out_fd, fcntl.F_DUPFD_CLOEXEC, 100)
        err_hi = fcntl.fcntl(err_fd, fcntl.F_DUPFD_CLOEXEC, 100)
        sock_hi = fcntl.fcntl(sock_fd, fcntl.F_DUPFD_CLOEXEC, 100)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out_hi, 1)
        os.dup2(err_hi, 2)
        os.dup2(sock_hi, 3, inheritable=False)
        isolation.enter_child(setup, keep_fds=[3])
    except BaseException as exc:  # noqa: BLE001 - never run a program half isolated
        try:
            os.write(2, f"sandbox setup failed: {type(exc).__name__}: {exc}\n".encode()[:1000])
        finally:
            os._exit(SETUP_FAILED)
    isolation.set_name("mucode-program")
    try:
        child.main(3)
    finally:
        os._exit(0)


class Zygote:
    """Serves the executor (new judges) and the judges (new candidate processes, their exit statuses).

    ``numpy_role``: the numpy zygote, a fork of the main one that has imported NumPy as well. It makes no judge:
    the main zygote hands it one socket per judge, and it serves those judges' candidates that need NumPy.
    """

    def __init__(self, ctl: socket.socket, cfg: ZygoteConfig, *, numpy_role: bool = False) -> None:
        self.ctl = ctl
        self.cfg = cfg
        self.numpy_role = numpy_role
        self.numpy_ctl: socket.socket | None = None  # main zygote: its line to the numpy zygote
        self.numpy_pid = 0
        self.sel = selectors.DefaultSelector()
        self.judges: dict[socket.socket, int] = {}  # control socket -> slot
        self.judge_pids: dict[int, int] = {}  # judge pid -> slot
        self.live: dict[int, int] = {}  # slot -> pid of its candidate process, until reaped
        self.live_pidfd: dict[int, int] = {}  # candidate pid -> pidfd
        self.owner: dict[int, socket.socket] = {}  # candidate pid -> the judge that asked for it
        self.owner_of: dict[int, socket.socket] = {}  # candidate pid -> the judge told its exit status
        self.deferred: dict[int, deque] = {}  # slot -> spawn requests waiting for the slot's last process
        self.setups: dict[int, isolation.ChildSetup] = {}  # per slot (the child changes only its own copy)
        self.oom_before: dict[int, int] = {}  # candidate pid -> its slot's oom_kill count when it was made

    def start(self) -> None:
        """The main zygote: the standard library, the harness, the namespaces; then the numpy zygote is forked
        from it (NumPy is imported there only: it adds half again to the memory every fork copies, and few
        programs use it), and both move into their read-only roots."""
        isolation.set_name("mucode-zygote")
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
        isolation.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of weak-mode programs come back to us
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        failed = _preimport(numpy=False)
        import random

        random.seed(0)  # every program starts from the same random state: verdicts repeat
        child.prepare(3)
        if self.cfg.strong:
            _make_namespaces(self.cfg)
        info: dict[str, Any] = {"preimport_failed": failed, "numpy_zygote": False}
        if self.cfg.preimport_numpy:
            info.update(self._start_numpy_zygote())
        info["threads"] = self._serve_from_root()
        self.ctl.send(pickle.dumps(("ready", info)))

    def _start_numpy(self) -> None:
        """The numpy zygote's start, in the fork of the main zygote."""
        isolation.set_name("mucode-zygote-np")
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the main zygote
        isolation.prctl(36, 1)
        import random

        import numpy  # noqa: F401 - the point of this zygote

        random.seed(0)  # as in the main zygote, whatever the import did
        self.ctl.send(pickle.dumps(("ready", {"threads": self._serve_from_root()})))

    def _serve_from_root(self) -> int:
        """Freeze what is imported, enter the read-only root, and listen; returns the zygote's thread count (a
        fork copies only the calling thread: there must be no other)."""
        os.environ.clear()  # now: NumPy's import reads OPENBLAS_NUM_THREADS and the like
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        gc.collect()
        gc.freeze()  # the imported modules stay shared with every fork: the collector must not touch them
        self.cfg.base_vm = isolation.vm_size()
        threads = len(os.listdir("/proc/self/task"))
        if self.cfg.strong:  # last: from here on the zygote sees only the read-only root
            self.cfg.tmp_binds = isolation.make_root_namespace()
        self.sel.register(self.ctl, selectors.EVENT_READ, "parent" if self.numpy_role else "executor")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "sigchld")
        return threads

    def _start_numpy_zygote(self) -> dict[str, Any]:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the numpy zygote
            mine.close()
            self.ctl.close()
            z = Zygote(theirs, self.cfg, numpy_role=True)
            try:
                z._start_numpy()
            except BaseException as exc:  # noqa: BLE001 - reported; programs then import NumPy themselves
                try:
                    theirs.send(pickle.dumps(("error", f"{type(exc).__name__}: {exc}")))
                finally:
                    os._exit(1)
            z.serve()
        theirs.close()
        status, detail = pickle.loads(mine.recv(1 << 16) or pickle.dumps(("error", "no answer")))  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire
        if status != "ready":
            mine.close()
            os.waitpid(pid, 0)
            return {"numpy_zygote": False, "numpy_zygote_error": str(detail)}
        self.numpy_ctl, self.numpy_pid = mine, pid
        return {"numpy_zygote": True, "numpy_zygote_threads": detail["threads"]}

    def serve(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data == "executor":
                    self._from_executor()
                elif key.data == "parent":
                    self._from_parent()
                elif key.data == "sigchld":
                    self._reap()
                else:
                    self._from_judge(key.fileobj)

    def _from_parent(self) -> None:
        """The numpy zygote: the main zygote hands over a new judge's socket (or is gone)."""
        try:
            msg, fds, _, _ = socket.recv_fds(self.ctl, 64, 1)
        except OSError:
            msg, fds = b"", []
        if not msg or not fds:
            self._shutdown()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=fds[0])
        self.judges[sock] = int(msg.decode())
        self.sel.register(sock, selectors.EVENT_READ, "judge")

    # -- executor requests: a judge for a slot ---------------------------------------------------------
    def _from_executor(self) -> None:
        try:
            msg, fds, _, _ = socket.recv_fds(self.ctl, 4096, 4)
        except OSError:
            msg, fds = b"", []
        if not msg:
            self._shutdown()
        slot = int(msg.decode())
        e_fd = fds[0]
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        np_theirs = None
        if self.numpy_ctl is not None:  # the judge's own line to the numpy zygote
            np_mine, np_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                socket.send_fds(self.numpy_ctl, [str(slot).encode()], [np_mine.fileno()])
            except OSError:
                np_theirs.close()
                np_theirs = None
            np_mine.close()
        pid = os.fork()
        if pid == 0:  # the judge
            try:
                mine.close()
                self.ctl.close()
                keep = {e_fd, theirs.fileno()} | ({np_theirs.fileno()} if np_theirs is not None else set())
                _close_all_but(keep)
                judge_server(e_fd, theirs, np_theirs, slot, self.cfg)
            except BaseException:  # noqa: BLE001 - the executor reports the slot's job as sandbox_error
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(70)
        os.close(e_fd)
        theirs.close()
        if np_theirs is not None:
            np_theirs.close()
        self.judges[mine] = slot
        self.judge_pids[pid] = slot
        self.sel.register(mine, selectors.EVENT_READ, "judge")
        pidfd = os.pidfd_open(pid)
        socket.send_fds(self.ctl, [str(pid).encode()], [pidfd])
        os.close(pidfd)

    def _shutdown(self) -> None:
        """The executor is gone: kill every judge and candidate process and reap them all (no zombie is left
        to a parent that may never reap it), then exit."""
        for pid in list(self.live.values()) + list(self.judge_pids) + ([self.numpy_pid] if self.numpy_pid else []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break  # nothing left
            if pid == 0:
                time.sleep(0.005)
        os._exit(0)

    # -- judge requests: spawn a candidate process, report its status ------------------------------------
    def _from_judge(self, sock: socket.socket) -> None:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 4096, 8)
        except OSError:
            msg, fds = b"", []
        if not msg:
            self._judge_gone(sock)
            return
        req = pickle.loads(msg)  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire
        if req[0] == "spawn":
            slot = self.judges[sock]
            if slot in self.live:
                self.deferred.setdefault(slot, deque()).append((sock, req, fds))
            else:
                self._spawn(sock, slot, req, fds)

    def _send(self, sock: socket.socket, msg: Any, fds: list[int] | None = None) -> None:
        try:
            if fds:
                socket.send_fds(sock, [pickle.dumps(msg)], fds)
            else:
                sock.send(pickle.dumps(msg))
        except OSError:
            pass

    def _spawn(self, sock: socket.socket, slot: int, req: tuple, fds: list[int]) -> None:
        c_sock, out_fd, err_fd = fds
        workdir = req[1]
        setup = self.setups.get(slot) if workdir is None else None
        if setup is None:
            setup = _child_setup(slot, self.cfg, workdir)
            if workdir is None:
                self.setups[slot] = setup
        strong = self.cfg.strong
        oom_fd = self.cfg.oom_fds[slot] if self.cfg.oom_fds else None
        ooms = cgroups.read_oom_kills(oom_fd) if oom_fd is not None else 0
        if self.cfg.usage_fds:  # the slot's last program is gone; its shared memory and /tmp may not be yet
            cgroups.settle(self.cfg.usage_fds[slot], self.cfg.settle_bytes)
        try:
            if strong:
                isolation.setns(self.cfg.pidns_fd, isolation.CLONE_NEWPID)
                isolation.unshare(isolation.CLONE_NEWPID)
            pid = raw_fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self._send(sock, ("error", f"cannot start the program's process: {exc}"))
            return
        if pid == 0:
            _candidate_process(setup, c_sock, out_fd, err_fd)
        if strong:
            isolation.setns(self.cfg.pidns_fd, isolation.CLONE_NEWPID)
        for fd in fds:
            os.close(fd)
        self.live[slot] = pid
        self.owner[pid] = sock
        self.owner_of[pid] = sock
        if oom_fd is not None:
            self.oom_before[pid] = ooms
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
        if pidfd is not None:
            self.live_pidfd[pid] = pidfd
            self._send(sock, ("spawned", pid), [pidfd])
        else:
            self._send(sock, ("spawned", pid))

    def _reap(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.judge_pids:
                self.judge_pids.pop(pid)
                continue
            if pid == self.numpy_pid:  # died: judges made from now on use this zygote for every program
                self.numpy_pid = 0
                if self.numpy_ctl is not None:
                    self.numpy_ctl.close()
                    self.numpy_ctl = None
                continue
            slot = next((s for s, p in self.live.items() if p == pid), None)
            if slot is None:
                continue  # an orphan of a weak-mode program
            del self.live[slot]
            self.owner.pop(pid, None)
            pidfd = self.live_pidfd.pop(pid, None)
            if pidfd is not None:
                os.close(pidfd)
            owner = self.owner_of.pop(pid, None)
            # Killed by its slot's memory limit (the cgroup's count went up while it ran): a memory verdict.
            before = self.oom_before.pop(pid, None)
            oom = before is not None and cgroups.read_oom_kills(self.cfg.oom_fds[slot]) > before
            if owner is not None and owner in self.judges:
                self._send(owner, ("status", pid, status, oom))
            queue = self.deferred.get(slot)
            if queue:
                sock, req, fds = queue.popleft()
                if sock in self.judges:
                    self._spawn(sock, slot, req, fds)
                else:
                    for fd in fds:
                        os.close(fd)

    def _judge_gone(self, sock: socket.socket) -> None:
        """A judge died (killed by the executor past its deadline): kill its candidate process too."""
        slot = self.judges.pop(sock, None)
        self.sel.unregister(sock)
        sock.close()
        for pid, owner in list(self.owner.items()):
            if owner is sock:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid, owner in list(self.owner_of.items()):
            if owner is sock:
                self.owner_of.pop(pid)
        if slot is not None:
            queue = self.deferred.get(slot)
            while queue and queue[0][0] is sock:
                for fd in queue.popleft()[2]:
                    os.close(fd)


def zygote_main(ctl: socket.socket, cfg: ZygoteConfig) -> None:
    z = Zygote(ctl, cfg)
    try:
        z.start()
    except BaseException as exc:  # noqa: BLE001
        try:
            ctl.send(pickle.dumps(("error", f"{type(exc).__name__}: {exc}")))
        finally:
            os._exit(1)
    z.serve()


# -- judge ---------------------------------------------------------------------------------------------------
class _Candidate:
    """The next candidate process of a slot, asked for in advance."""

    def __init__(self, z: socket.socket, strong: bool, numpy: bool = False) -> None:
        self.z = z
        self.strong = strong
        self.numpy = numpy  # made by the numpy zygote
        self.j_sock, c_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.out_fd = os.memfd_create("stdout", os.MFD_CLOEXEC)
        self.err_fd = os.memfd_create("stderr", os.MFD_CLOEXEC)
        self.workdir = None
        if not strong:
            import tempfile

            self.workdir = tempfile.mkdtemp(prefix="mucode-run-")
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.error: str | None = None
        self.oom_killed = False  # the slot's cgroup killed it for memory (told with its exit status)
        socket.send_fds(z, [pickle.dumps(("spawn", self.workdir))], [c_sock.fileno(), self.out_fd, self.err_fd])
        c_sock.close()

    def ready(self) -> bool:
        if self.pid is None and self.error is None:
            msg, fds, _, _ = socket.recv_fds(self.z, 4096, 1)
            if not msg:
                raise OSError("the zygote is gone")
            reply = pickle.loads(msg)  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire
            if reply[0] == "spawned":
                self.pid = reply[1]
                self.pidfd = fds[0] if fds else None
            else:
                self.error = reply[1]
        return self.error is None

    def exited(self) -> bool:
        if self.pidfd is None:
            return False
        r, _, _ = select.select([self.pidfd], [], [], 0)
        return bool(r)

    def kill(self) -> None:
        if self.pid is None:
            return
        try:
            if not self.strong:
                os.killpg(self.pid, signal.SIGKILL)  # its process group (it called setsid)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass

    def wait(self) -> int | None:
        """Its wait status, sent by the zygote once it has reaped it (and so, pid 1 of its namespace, everything it
        started)."""
        if self.pid is None:
            return None
        while True:
            msg = self.z.recv(4096)
            if not msg:
                raise OSError("the zygote is gone")
            reply = pickle.loads(msg)  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire
            if reply[0] == "status" and reply[1] == self.pid:
                self.oom_killed = bool(reply[3:4] and reply[3])
                return reply[2]

    def discard(self) -> None:
        """Not wanted after all (the job needs the other zygote): kill it, wait until it is reaped (a slot runs
        one process at a time), close."""
        try:
            if self.ready():
                self.kill()
                self.wait()
        finally:
            self.close()

    def close(self) -> None:
        self.j_sock.close()
        for fd in (self.out_fd, self.err_fd, self.pidfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self.workdir:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)


def needs_numpy(suite: dict[str, Any], code: str) -> bool:
    """Whether the program's process should come from the numpy zygote: the program or the suite's part that
    runs in its process names NumPy. A program that imports it by other means imports it itself (slower, same
    verdict)."""
    return suite["compiled"]["numpy"] or "numpy" in code


def limit_judge_memory(cfg: ZygoteConfig) -> int:
    """The judge's own memory limit: ``judge_memory_mb`` of address space beyond the zygote's (so a suite, or
    what a program makes it hold, fails there with a MemoryError, a verdict, instead of growing the host's
    memory). Numeric libraries a suite imports here run one thread: OpenBLAS reserves ~40 MB per thread.
    Returns the limit in bytes."""
    import resource

    threads = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    os.environ.update(dict.fromkeys(threads, "1"))
    total = (cfg.base_vm or isolation.vm_size()) + (cfg.limits.judge_memory_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (total, total))
    return total


def judge_usage() -> dict[str, int]:
    """What the judge observes of its own memory: its address-space limit and its peak resident size so far."""
    import resource

    return {"memory_limit": resource.getrlimit(resource.RLIMIT_AS)[0],
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def judge_server(e_fd: int, z: socket.socket, zn: socket.socket | None, slot: int, cfg: ZygoteConfig) -> None:
    """One slot's judge: takes jobs from the executor one at a time; never returns. ``z`` and ``zn``: its lines to
    the main and the numpy zygote (None when there is none); the next candidate process is asked for in advance,
    from the zygote the last job needed."""
    isolation.set_name(f"mucode-judge{slot}")
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
    limits = cfg.limits
    limit_judge_memory(cfg)
    suites: dict[int, dict[str, Any]] = {}

    def candidate(numpy: bool) -> _Candidate:
        return _Candidate(zn, cfg.strong, True) if numpy and zn is not None else _Candidate(z, cfg.strong)

    nxt = candidate(False)
    while True:
        try:
            msg = pickle.loads(wire.recv_frame(e_fd))  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire
        except (wire.WireError, OSError, EOFError):
            nxt.kill()
            os._exit(0)
        if msg[0] == "suite":
            suites[msg[1]] = msg[2]
            while len(suites) > SUITE_CACHE:
                suites.pop(next(iter(suites)))
            continue
        if msg[0] != "job":
            continue
        _, jid, sid, code, collect = msg
        suite = suites[sid]
        use_numpy = zn is not None and needs_numpy(suite, code)
        cand = nxt
        try:
            if cand.numpy != use_numpy:
                cand.discard()
                cand = candidate(use_numpy)
            ok = cand.ready()
        except OSError as exc:
            result: dict[str, Any] = {"status": "sandbox_error", "error": str(exc)}
            wire.send_frame(e_fd, pickle.dumps(("result", jid, result)))
            os._exit(0)
        if not ok:
            result = {"status": "sandbox_error", "error": cand.error}
        else:
            result = _judge_one(cand, suite, code, collect, limits, cfg.send_ahead)
        cand.close()
        nxt = candidate(use_numpy)  # start the next process now: it isolates while we report
        wire.send_frame(e_fd, pickle.dumps(("result", jid, result)))


def _judge_one(cand: _Candidate, suite: dict[str, Any], code: str, collect: bool, limits: Limits,
               send_ahead: bool = True) -> dict[str, Any]:
    started = time.monotonic()
    job = {"code": code, "tests": suite["tests"], "compiled": suite["compiled"], "collect": collect}
    conn = remote.Conn(cand.j_sock.fileno(), started + limits.timeout_s, send_ahead=send_ahead)
    jd = judge.Judge(job, conn, limits)
    try:
        run = jd.judge()
        alone = cand.exited() or (conn.gone is not None and conn.gone.reason == "died")
        cand.kill()
        status = cand.wait()
        if cand.oom_killed:  # its memory (shared memory included) went past the slot's cgroup limit
            run.memory = True
            run.fatal = run.fatal or "memory"
        result = judge.result_of(jd, run, limits, wait_status=status, alone=alone, out_fd=cand.out_fd,
                                 err_fd=cand.err_fd, started=started)
        result["judge"] = {**judge_usage(), "received_bytes": remote.JOB_BYTES - conn.bytes_left,
                           "received_values": conn.values[0], "received_objects": conn.objects}
        return result
    except BaseException as exc:  # noqa: BLE001 - a bug here must come back as sandbox_error, not a verdict
        cand.kill()
        return {"status": "sandbox_error", "error": "".join(traceback.format_exception(exc))[-2000:]}


# -- executor --------------------------------------------------------------------------------------------------
class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.pidfd: int | None = None
        self.suites: dict[int, None] = {}  # suites the judge holds, oldest first
        self.queue: deque[tuple[int, float]] = deque()  # jobs sent to the judge, in its order


class Executor:
    def __init__(self, client: socket.socket, slots: int, limits: Limits, allow_weak: bool,
                 pretend_missing: list[str] | None = None, preimport_numpy: bool = True,
                 send_ahead: bool = True, measure_without: list[str] | None = None) -> None:
        self.client = client
        self.nslots = max(1, min(slots, MAX_SLOTS))
        self.limits = limits
        self.allow_weak = allow_weak
        self.preimport_numpy = preimport_numpy
        self.send_ahead = send_ahead
        try:  # a read-only cgroup2 (a container's): writable again in the executor's own mount namespace
            cgroups.remount_v2_writable()
        except OSError:
            pass  # detect() reports the cgroup as not writable
        self.caps = isolation.detect()
        for name in pretend_missing or []:  # tests: behave as on a host without this protection
            setattr(self.caps, name, False)
            self.caps.errors[name] = "disabled for a test (--pretend-missing)"
        self.strong = self.caps.strong
        # Benchmarks only (bench/sandbox.py's baseline): protections left out while the host still has them.
        self.measure_without = sorted(set(measure_without or []) & {"seccomp"})
        self.cgroups: cgroups.SlotCgroups | None = None
        self.zygote: socket.socket | None = None
        self.zygote_pid = 0
        self.slots = [_Slot(i) for i in range(self.nslots)]
        self._suite_ids = 0
        self._prepared: dict[tuple, dict[str, Any]] = {}

    # -- start-up ---------------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "capabilities": asdict(self.caps),
            "strong": self.strong,
            "missing": self.caps.missing(),
            "slots": self.nslots,
            "limits": asdict(self.limits),
            "pid": os.getpid(),
        }
        if not self.strong and not self.allow_weak:
            info["refused"] = True
            return info
        if self.measure_without:
            info["measured_without"] = self.measure_without
        if self.strong and self.caps.cgroup:
            # Memory (shared memory and /tmp included: no rlimit sees those) and processes per slot.
            found = cgroups.detect()
            made = cgroups.SlotCgroups(found.version or self.caps.cgroup, cgroups.executor_tag(), found.home)
            try:
                made.sweep()
                made.make(self.nslots, slot_memory_bytes(self.limits), self.limits.nproc + 8)
                self.cgroups = made
            except OSError as exc:
                info["cgroup_error"] = f"cgroup {made.version}: {exc}"
                made.remove()
        info["cgroups"] = self.cgroups is not None
        info["cgroup_version"] = self.cgroups.version if self.cgroups is not None else None
        status, detail, cfg = self._start_zygote()
        if status != "ready" and self.strong:
            # The root file system could not be built on this host: a missing protection like the others.
            self.caps.mntns = False
            self.caps.errors["mntns"] = str(detail)
            self.strong = False
            info.update(strong=False, missing=self.caps.missing(), capabilities=asdict(self.caps))
            if not self.allow_weak:
                info["refused"] = True
                return info
            status, detail, cfg = self._start_zygote()
        if status != "ready":
            raise RuntimeError(f"the sandbox zygote failed to start: {detail}")
        info.update(detail)
        info["uid_base"] = cfg.uid_base
        for slot in self.slots:
            self._new_judge(slot)
        return info

    def _start_zygote(self) -> tuple[str, Any, ZygoteConfig]:
        seccomp = isolation.program_filter() if self.caps.seccomp and "seccomp" not in self.measure_without \
            else None
        cfg = ZygoteConfig(slots=self.nslots, strong=self.strong, ipcns=self.caps.ipcns, limits=self.limits,
                           uid_base=_uid_base(), slot_cgroups=self.cgroups if self.strong else None,
                           preimport_numpy=self.preimport_numpy, send_ahead=self.send_ahead, seccomp=seccomp)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the zygote
            ours.close()
            self.client.close()
            zygote_main(theirs, cfg)
            os._exit(0)
        theirs.close()
        status, detail = pickle.loads(ours.recv(1 << 16) or pickle.dumps(("error", "no answer")))  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire
        if status != "ready":
            ours.close()
            os.waitpid(pid, 0)
            return status, detail, cfg
        self.zygote, self.zygote_pid = ours, pid
        return status, detail, cfg

    def _new_judge(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        assert self.zygote is not None
        socket.send_fds(self.zygote, [str(slot.index).encode()], [theirs.fileno()])
        theirs.close()
        msg, fds, _, _ = socket.recv_fds(self.zygote, 64, 1)
        if not msg:
            raise OSError("the sandbox zygote is gone")
        slot.sock, slot.pidfd, slot.suites = ours, (fds[0] if fds else None), {}

    def _replace_judge(self, slot: _Slot) -> None:
        """Kill a judge that overran its deadline (its candidate process dies with it) and start another."""
        if slot.pidfd is not None:
            try:
                signal.pidfd_send_signal(slot.pidfd, signal.SIGKILL)
            except OSError:
                pass
            select.select([slot.pidfd], [], [], 5.0)
            os.close(slot.pidfd)
        if slot.sock is not None:
            slot.sock.close()
        self._new_judge(slot)

    # -- a batch --------------------------------------------------------------------------------------------
    def _prepare(self, s: dict[str, Any]) -> dict[str, Any]:
        """A suite compiled for the judges, cached across batches by content (a round runs the same problems
        again and again); its id stays the same, so judges keep their copy too."""
        key = (s["prefix"], s["setup"], tuple(s["tests"]), s.get("entry_point"))
        hit = self._prepared.get(key)
        if hit is not None:
            self._prepared[key] = self._prepared.pop(key)  # most recently used last
            return hit
        self._suite_ids += 1
        hit = {"id": self._suite_ids,
               "data": {"prefix": s["prefix"], "tests": s["tests"],
                        "compiled": compile_suite(s["prefix"], s["setup"], s["tests"], s.get("entry_point"))}}
        self._prepared[key] = hit
        while len(self._prepared) > PREPARED_CACHE:
            self._prepared.pop(next(iter(self._prepared)))
        return hit

    def run_batch(self, suites: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run every job; each slot's judge has up to QUEUE_DEPTH jobs in hand, so it starts the next one as
        soon as it has answered the previous (no round trip through the executor in between). A suite is compiled
        when its first job is sent, so the judges start at once."""
        prepared: dict[int, dict[str, Any]] = {}
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        sel = selectors.DefaultSelector()
        step = self.limits.timeout_s + HARD_GRACE_S
        for slot in self.slots:
            slot.queue = deque()  # (job index, hard deadline) in the order the judge runs them
            sel.register(slot.sock, selectors.EVENT_READ, slot)

        def send(slot: _Slot, i: int) -> bool:
            job = jobs[i]
            suite = prepared[job["suite"]]
            try:
                fd = slot.sock.fileno()
                if suite["id"] not in slot.suites:
                    wire.send_frame(fd, pickle.dumps(("suite", suite["id"], suite["data"])))
                    slot.suites[suite["id"]] = None
                    while len(slot.suites) > SUITE_CACHE:  # the judge evicts the same, oldest first
                        slot.suites.pop(next(iter(slot.suites)))
                wire.send_frame(fd, pickle.dumps(("job", i, suite["id"], job["code"], job.get("collect"))))
            except OSError:
                return False
            last = slot.queue[-1][1] if slot.queue else time.monotonic()
            slot.queue.append((i, max(last, time.monotonic()) + step))
            return True

        def fill(slot: _Slot) -> None:
            while pending and len(slot.queue) < QUEUE_DEPTH:
                i = pending.popleft()
                k = jobs[i]["suite"]
                if k not in prepared:
                    try:
                        prepared[k] = self._prepare(suites[k])
                    except Exception as exc:  # noqa: BLE001 - this suite's jobs fail, the batch goes on
                        results[i] = {"status": "sandbox_error",
                                      "error": f"the suite could not be prepared: {type(exc).__name__}: {exc}"}
                        continue
                if not send(slot, i):
                    pending.appendleft(i)
                    restart(slot, "the judge is gone")
                    return

        def restart(slot: _Slot, why: str, head: dict[str, Any] | None = None) -> None:
            """The slot's judge failed or overran: its first job gets ``head`` (or a sandbox_error), the jobs it
            never started go back to the queue, and a new judge takes over."""
            if slot.queue:
                i, _ = slot.queue.popleft()
                results[i] = head or {"status": "sandbox_error", "error": f"the judge process failed: {why}"}
            for i, _ in reversed(slot.queue):
                pending.appendleft(i)
            slot.queue.clear()
            sel.unregister(slot.sock)
            self._replace_judge(slot)
            sel.register(slot.sock, selectors.EVENT_READ, slot)

        for slot in self.slots:
            fill(slot)
        while any(slot.queue for slot in self.slots):
            busy = [slot for slot in self.slots if slot.queue]
            timeout = max(0.0, min(slot.queue[0][1] for slot in busy) - time.monotonic())
            for key, _ in sel.select(timeout):
                slot = key.data
                if not slot.queue:  # an idle judge's socket closed: replace it
                    restart(slot, "closed")
                    fill(slot)
                    continue
                i = slot.queue[0][0]
                try:
                    _, jid, res = pickle.loads(wire.recv_frame(slot.sock.fileno(), time.monotonic() + 30))  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire
                    if jid != i:
                        raise ValueError(f"answer for job {jid}, expected {i}")
                except (wire.WireError, OSError, pickle.PickleError, EOFError, ValueError) as exc:
                    restart(slot, str(exc))
                else:
                    slot.queue.popleft()
                    results[i] = res
                    if slot.queue:  # the next job started now: its deadline counts from here
                        j, _ = slot.queue[0]
                        slot.queue[0] = (j, time.monotonic() + step)
                fill(slot)
            now = time.monotonic()
            for slot in self.slots:
                if slot.queue and now >= slot.queue[0][1]:
                    i = slot.queue[0][0]
                    restart(slot, "deadline", _hard_timeout(suites[jobs[i]["suite"]]["tests"], self.limits))
                    fill(slot)
        for slot in self.slots:
            sel.unregister(slot.sock)
        sel.close()
        return [r if r is not None else {"status": "sandbox_error", "error": "the program was never run"}
                for r in results]

    # -- serve ----------------------------------------------------------------------------------------------
    def serve(self) -> None:
        fd = self.client.fileno()
        while True:
            try:
                msg = pickle.loads(wire.recv_frame(fd))  # noqa: S301 - between the sandbox's own processes; the program's process speaks only wire
            except (wire.Closed, OSError):
                return
            op = msg[0]
            if op == "run":
                try:
                    reply = ("results", self.run_batch(msg[1], msg[2]))
                except BaseException as exc:  # noqa: BLE001
                    reply = ("error", "".join(traceback.format_exception(exc))[-3000:])
            elif op == "ping":
                reply = ("pong", os.getpid())
            elif op == "shutdown":
                wire.send_frame(fd, pickle.dumps(("bye", None)))
                return
            else:
                reply = ("error", f"unknown request {op!r}")
            wire.send_frame(fd, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))

    def close(self) -> None:
        for slot in self.slots:
            if slot.sock is not None:
                slot.sock.close()
            if slot.pidfd is not None:
                try:
                    signal.pidfd_send_signal(slot.pidfd, signal.SIGKILL)
                except OSError:
                    pass
                os.close(slot.pidfd)
        if self.zygote is not None:
            self.zygote.close()  # the zygote kills and reaps everything, then exits
            deadline = time.monotonic() + 15
            while True:
                try:
                    pid, _ = os.waitpid(self.zygote_pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.kill(self.zygote_pid, signal.SIGKILL)
                    os.waitpid(self.zygote_pid, 0)
                    break
                time.sleep(0.01)
        if self.cgroups is not None:
            for _ in range(50):  # the last processes may still be on their way out
                if self.cgroups.remove():
                    break
                time.sleep(0.02)


def _hard_timeout(tests: list[str], limits: Limits) -> dict[str, Any]:
    return {
        "status": "timeout",
        "passed": False,
        "tests": [{"test": t[:judge.TEST_TEXT_CHARS], "outcome": "error", "message": "timed out"} for t in tests],
        "feedback": f"Code execution timed out: the limit is {limits.timeout_s:g} s for loading and all tests",
        "stdout": "",
        "stderr": "",
        "duration_ms": (limits.timeout_s + HARD_GRACE_S) * 1000.0,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="mucode sandbox executor (started by app.sandbox.Sandbox)")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--limits", default="{}")
    ap.add_argument("--allow-weak", action="store_true")
    ap.add_argument("--pretend-missing", action="append", default=[])
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--no-send-ahead", action="store_true")
    ap.add_argument("--measure-without", action="append", default=[])
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    isolation.set_name("mucode-executor")
    client = socket.socket(fileno=args.fd)
    limits = Limits(**json.loads(args.limits))
    ex = Executor(client, args.workers, limits, args.allow_weak, args.pretend_missing, not args.no_numpy,
                  not args.no_send_ahead, args.measure_without)
    try:
        try:
            info = ex.start()
        except BaseException as exc:  # noqa: BLE001
            wire.send_frame(client.fileno(), pickle.dumps(("error", f"{type(exc).__name__}: {exc}")))
            return
        wire.send_frame(client.fileno(), pickle.dumps(("refused" if info.get("refused") else "ready", info)))
        if not info.get("refused"):
            ex.serve()
    finally:
        ex.close()


if __name__ == "__main__":
    main(sys.argv[1:])
