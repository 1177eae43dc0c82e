"""The executor: a long-lived server process that runs batches of programs, each in its own isolated process.

Process tree (all started from ``Sandbox``; none holds a database connection or any credential)::

    Celery worker / CLI  --(socketpair, pickled batches)-->  executor  (python -m app.sandbox.executor)
                                                              |  fork at start-up, before any job exists
                                                              v
                                                            zygote   (stdlib and numpy already imported,
                                                              |       the empty network namespaces and the
                                                              |       read-only root prepared)
                                                              |  fork per program
                                                              v
                                                            judge    (trusted: runs the tests)
                                                              |  fork at once, before the judge reads its job
                                                              v
                                                            candidate (pid 1 of its own pid namespace; own
                                                                       network, mount and IPC namespaces; its
                                                                       slot's uid; rlimits; empty environment)

The zygote never sees a job, so a candidate's process, a copy of it, holds no test, no expected value and no
other program. The executor keeps one spare judge per slot ready so the forks overlap with running programs.
"""

from __future__ import annotations

import argparse
import json
import marshal  # noqa: F401 - imported before the zygote forks
import os
import pickle
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict
from typing import Any

from app.sandbox import child, isolation, judge, verdict, wire  # noqa: F401 - preloaded for the forks
from app.sandbox import feedback as _feedback  # noqa: F401
from app.sandbox.types import Limits

# Imported in the zygote so that no program (and no judge) pays for them.
PREIMPORT = (
    "abc", "array", "ast", "base64", "binascii", "bisect", "calendar", "cmath", "codecs", "collections",
    "collections.abc", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum",
    "fractions", "functools", "hashlib", "heapq", "inspect", "io", "itertools", "json", "keyword", "math",
    "numbers", "operator", "pprint", "queue", "random", "re", "statistics", "string", "struct", "textwrap",
    "threading", "time", "traceback", "types", "typing", "unicodedata", "uuid", "warnings", "weakref", "zlib",
)
OPTIONAL_PREIMPORT = ("numpy",)

UID_BASE = 100_000
MAX_SLOTS = 64
HARD_GRACE_S = 5.0
SETUP_FAILED = 71  # exit status of a candidate process that could not isolate itself: an infrastructure error  # beyond the program's own time limit before the executor kills a judge


def _uid_base() -> int:
    """Per-executor uid range, so two executors on one host never share a slot's uid (RLIMIT_NPROC is per uid)."""
    return UID_BASE + (os.getpid() % 1_000_000) * MAX_SLOTS


# -- zygote ----------------------------------------------------------------------------------------------------
class ZygoteConfig:
    def __init__(self, *, slots: int, strong: bool, ipcns: bool, limits: Limits, uid_base: int,
                 cgroup_tag: str | None) -> None:
        self.slots = slots
        self.strong = strong
        self.ipcns = ipcns
        self.limits = limits
        self.uid_base = uid_base
        self.cgroup_tag = cgroup_tag
        self.netns_fds: list[int] = []
        self.rootns_fd: int | None = None


def _preimport() -> list[str]:
    failed = []
    for name in PREIMPORT + OPTIONAL_PREIMPORT:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - numpy may be absent
            failed.append(name)
    return failed


def _make_namespaces(cfg: ZygoteConfig) -> None:
    """One empty network namespace per slot (a slot runs one program at a time), one for the zygote itself,
    and the mount namespace holding the read-only root."""
    for _ in range(cfg.slots):
        isolation.unshare(isolation.CLONE_NEWNET)
        cfg.netns_fds.append(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
    isolation.unshare(isolation.CLONE_NEWNET)  # the zygote and the judges: no network either
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - helper child
        os.close(r)
        try:
            isolation.make_root_namespace()
            os.write(w, b"ok")
        except BaseException as exc:  # noqa: BLE001
            os.write(w, f"{type(exc).__name__}: {exc}".encode()[:400])
        os.close(w)
        time.sleep(60)  # killed as soon as the zygote holds the namespace
        os._exit(0)
    os.close(w)
    status = os.read(r, 500)
    os.close(r)
    try:
        if status != b"ok":
            raise OSError(f"cannot build the sandbox root file system: {status.decode(errors='replace')}")
        cfg.rootns_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def zygote_main(ctl: socket.socket, cfg: ZygoteConfig) -> None:
    """Serve spawn requests until the executor goes away. Never returns."""
    try:
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        failed = _preimport()
        os.environ.clear()
        if cfg.strong:
            _make_namespaces(cfg)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # judges are reaped by the kernel
        threads = len(os.listdir("/proc/self/task"))
        ctl.send(pickle.dumps(("ready", {"preimport_failed": failed, "threads": threads})))
    except BaseException as exc:  # noqa: BLE001
        try:
            ctl.send(pickle.dumps(("error", f"{type(exc).__name__}: {exc}")))
        finally:
            os._exit(1)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 4096, 4)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        slot = int(msg.decode())
        e_fd = fds[0]
        for extra in fds[1:]:
            os.close(extra)
        pid = os.fork()
        if pid == 0:
            ctl.close()
            try:
                judge_process(e_fd, slot, cfg)
            finally:
                os._exit(70)
        os.close(e_fd)
        try:
            pidfd = os.pidfd_open(pid)
            socket.send_fds(ctl, [str(pid).encode()], [pidfd])
            os.close(pidfd)
        except OSError:
            ctl.send(str(pid).encode())


# -- judge process ---------------------------------------------------------------------------------------------
def _child_setup(slot: int, cfg: ZygoteConfig, workdir: str | None) -> isolation.ChildSetup:
    lim = cfg.limits
    return isolation.ChildSetup(
        strong=cfg.strong,
        uid=cfg.uid_base + slot,
        gid=cfg.uid_base + slot,
        netns_fd=cfg.netns_fds[slot] if cfg.strong else None,
        rootns_fd=cfg.rootns_fd,
        ipcns=cfg.ipcns,
        cgroups=isolation.cgroup_paths(cfg.cgroup_tag, slot) if cfg.cgroup_tag else [],
        cpu_s=lim.cpu_s,
        address_space=lim.memory_mb << 20,
        nproc=lim.nproc,
        fsize=lim.output_bytes,
        nofile=lim.nofile,
        tmp_bytes=lim.tmp_mb << 20,
        workdir=workdir,
    )


def judge_process(e_fd: int, slot: int, cfg: ZygoteConfig) -> None:
    """Fork the candidate's process right away (a clean copy of the zygote), then wait for the job."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
    out_fd = os.memfd_create("stdout", 0)
    err_fd = os.memfd_create("stderr", 0)
    j_sock, c_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    workdir = None
    if not cfg.strong:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="mucode-run-")
    setup = _child_setup(slot, cfg, workdir)
    if cfg.strong:
        isolation.unshare(isolation.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:  # the candidate's process
        try:
            # Move every descriptor the setup needs above the ones about to be placed at 0-3.
            import fcntl

            if setup.netns_fd is not None:
                setup.netns_fd = fcntl.fcntl(setup.netns_fd, fcntl.F_DUPFD_CLOEXEC, 100)
            if setup.rootns_fd is not None:
                setup.rootns_fd = fcntl.fcntl(setup.rootns_fd, fcntl.F_DUPFD_CLOEXEC, 100)
            out_hi = fcntl.fcntl(out_fd, fcntl.F_DUPFD_CLOEXEC, 100)
            err_hi = fcntl.fcntl(err_fd, fcntl.F_DUPFD_CLOEXEC, 100)
            sock_hi = fcntl.fcntl(c_sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 100)
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
        child.main(3)
        os._exit(0)
    c_sock.close()
    for fd in cfg.netns_fds + ([cfg.rootns_fd] if cfg.rootns_fd is not None else []):
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        wire.send_frame(e_fd, pickle.dumps(("hello", pid)))
        job = pickle.loads(wire.recv_frame(e_fd))
    except (wire.WireError, OSError):
        _abandon(pid, workdir, cfg.strong)
        os._exit(0)
    started = time.monotonic()
    limits = cfg.limits
    conn = judge.Conn(j_sock.fileno(), started + limits.timeout_s)
    jd = judge.Judge(job, conn, limits)
    try:
        run = jd.judge()
        result = judge.finish(jd, run, limits, c_pid=pid, out_fd=out_fd, err_fd=err_fd, weak=not cfg.strong,
                              started=started)
    except BaseException as exc:  # noqa: BLE001 - a bug here must come back as sandbox_error, not a verdict
        _abandon(pid, None, cfg.strong)
        result = {"status": "sandbox_error", "error": "".join(traceback.format_exception(exc))[-2000:]}
    if workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    try:
        wire.send_frame(e_fd, pickle.dumps(("result", result)))
    except OSError:
        pass
    os._exit(0)


def _abandon(pid: int, workdir: str | None, strong: bool) -> None:
    try:
        if strong:
            os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    if workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


# -- executor --------------------------------------------------------------------------------------------------
class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.spare: tuple[socket.socket, int | None] | None = None
        self.sock: socket.socket | None = None
        self.pidfd: int | None = None
        self.c_pidfd: int | None = None
        self.job: int | None = None
        self.deadline = 0.0
        self.started = 0.0


class Executor:
    def __init__(self, client: socket.socket, slots: int, limits: Limits, allow_weak: bool) -> None:
        self.client = client
        self.nslots = max(1, min(slots, MAX_SLOTS))
        self.limits = limits
        self.allow_weak = allow_weak
        self.caps = isolation.detect()
        self.strong = self.caps.strong
        self.cgroup_tag: str | None = None
        self.zygote: socket.socket | None = None
        self.zygote_pid = 0
        self.slots = [_Slot(i) for i in range(self.nslots)]
        self._compiled: dict[int, dict[str, Any]] = {}

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
        if self.strong and self.caps.cgroup:
            tag = str(os.getpid())
            try:
                mem = (self.limits.memory_mb + self.limits.tmp_mb + 256) << 20
                isolation.make_cgroups(tag, self.nslots, mem, self.limits.nproc + 8)
                self.cgroup_tag = tag
            except OSError as exc:
                info["cgroup_error"] = str(exc)
                isolation.remove_cgroups(tag)
        info["cgroups"] = self.cgroup_tag is not None
        cfg = ZygoteConfig(slots=self.nslots, strong=self.strong, ipcns=self.caps.ipcns, limits=self.limits,
                           uid_base=_uid_base(), cgroup_tag=self.cgroup_tag)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the zygote
            ours.close()
            self.client.close()
            zygote_main(theirs, cfg)
            os._exit(0)
        theirs.close()
        self.zygote, self.zygote_pid = ours, pid
        status, detail = pickle.loads(ours.recv(1 << 16))
        if status != "ready":
            raise RuntimeError(f"the sandbox zygote failed to start: {detail}")
        info.update(detail)
        info["uid_base"] = cfg.uid_base
        return info

    # -- spawning -------------------------------------------------------------------------------------------
    def _spawn(self, slot: int) -> tuple[socket.socket, int | None]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        assert self.zygote is not None
        socket.send_fds(self.zygote, [str(slot).encode()], [theirs.fileno()])
        theirs.close()
        msg, fds, _, _ = socket.recv_fds(self.zygote, 64, 1)
        if not msg:
            raise OSError("the sandbox zygote is gone")
        return ours, (fds[0] if fds else None)

    def _take(self, slot: _Slot) -> tuple[socket.socket, int | None]:
        if slot.spare is not None:
            pair, slot.spare = slot.spare, None
            return pair
        return self._spawn(slot.index)

    def _refill(self, slot: _Slot) -> None:
        if slot.spare is None:
            try:
                slot.spare = self._spawn(slot.index)
            except OSError:
                slot.spare = None

    # -- a batch --------------------------------------------------------------------------------------------
    def run_batch(self, suites: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        compiled = [judge.compile_suite(s["prefix"], s["setup"], s["tests"]) for s in suites]
        imports = [judge.setup_imports(s["setup"]) for s in suites]
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        sel = selectors.DefaultSelector()
        running: dict[int, _Slot] = {}

        def dispatch(slot: _Slot) -> None:
            while pending:
                i = pending.popleft()
                job = jobs[i]
                s = suites[job["suite"]]
                try:
                    sock, pidfd = self._take(slot)
                    kind, c_pid = pickle.loads(wire.recv_frame(sock.fileno(), time.monotonic() + 30))
                    payload = {
                        "prefix": s["prefix"], "code": job["code"], "setup_imports": imports[job["suite"]],
                        "tests": s["tests"], "compiled": compiled[job["suite"]], "collect": job.get("collect"),
                    }
                    wire.send_frame(sock.fileno(), pickle.dumps(payload))
                except (OSError, wire.WireError, pickle.PickleError, EOFError) as exc:
                    results[i] = {"status": "sandbox_error", "error": f"could not start the program: {exc}"}
                    continue
                slot.sock, slot.pidfd, slot.job = sock, pidfd, i
                try:
                    slot.c_pidfd = os.pidfd_open(c_pid)
                except OSError:
                    slot.c_pidfd = None
                slot.started = time.monotonic()
                slot.deadline = slot.started + self.limits.timeout_s + HARD_GRACE_S
                sel.register(sock, selectors.EVENT_READ, slot)
                running[slot.index] = slot
                return

        def release(slot: _Slot) -> None:
            sel.unregister(slot.sock)
            slot.sock.close()
            for fd in (slot.pidfd, slot.c_pidfd):
                if fd is not None:
                    os.close(fd)
            slot.sock = slot.pidfd = slot.c_pidfd = slot.job = None
            running.pop(slot.index, None)

        for slot in self.slots:
            dispatch(slot)
        for slot in self.slots:
            if pending:
                self._refill(slot)
        while running:
            now = time.monotonic()
            timeout = max(0.0, min(s.deadline for s in running.values()) - now)
            events = sel.select(timeout)
            for key, _ in events:
                slot = key.data
                i = slot.job
                try:
                    kind, res = pickle.loads(wire.recv_frame(slot.sock.fileno(), time.monotonic() + 10))
                except (wire.WireError, OSError, pickle.PickleError, EOFError, ValueError) as exc:
                    res = {"status": "sandbox_error", "error": f"the judge process failed: {exc}"}
                results[i] = res
                release(slot)
                dispatch(slot)
                if pending:
                    self._refill(slot)
            now = time.monotonic()
            for slot in list(running.values()):
                if now >= slot.deadline:
                    self._kill(slot)
                    i = slot.job
                    tests = suites[jobs[i]["suite"]]["tests"]
                    results[i] = _hard_timeout(tests, self.limits)
                    release(slot)
                    dispatch(slot)
        sel.close()
        out = []
        for r in results:
            if r is None:
                r = {"status": "sandbox_error", "error": "the program was never run"}
            out.append(r)
        return out

    def _kill(self, slot: _Slot) -> None:
        """A judge past its hard deadline: kill it and its candidate (pid 1 of its namespace, so everything in
        it), and wait until both are gone before the slot runs anything else."""
        for fd in (slot.pidfd, slot.c_pidfd):
            if fd is not None:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
        import select

        for fd in (slot.pidfd, slot.c_pidfd):
            if fd is not None:
                select.select([fd], [], [], 5.0)

    # -- serve ----------------------------------------------------------------------------------------------
    def serve(self) -> None:
        fd = self.client.fileno()
        while True:
            try:
                msg = pickle.loads(wire.recv_frame(fd))
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
            wire.send_frame(fd, pickle.dumps(reply))

    def close(self) -> None:
        for slot in self.slots:
            if slot.spare is not None:
                sock, pidfd = slot.spare
                sock.close()
                if pidfd is not None:
                    os.close(pidfd)
                slot.spare = None
        if self.zygote is not None:
            self.zygote.close()
            try:
                os.kill(self.zygote_pid, signal.SIGKILL)
                os.waitpid(self.zygote_pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        if self.cgroup_tag:
            time.sleep(0.05)
            isolation.remove_cgroups(self.cgroup_tag)


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
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    client = socket.socket(fileno=args.fd)
    limits = Limits(**json.loads(args.limits))
    ex = Executor(client, args.workers, limits, args.allow_weak)
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
