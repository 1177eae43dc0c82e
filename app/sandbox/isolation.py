"""Linux isolation primitives for the sandbox: namespaces, mounts, uid drop, rlimits, keyrings, seccomp.

Everything here is called in the executor's processes (never in the Celery worker): ``detect()`` finds out
what this host allows, ``build_root_template()`` prepares a read-only minimal root file system once,
``enter_child()`` is the sequence a candidate's process runs (as root) before it drops to its own uid. The
per-slot cgroups are in ``app.sandbox.cgroups``, the system call filter in ``app.sandbox.seccomp``.
Python 3.11 has no ``os.unshare``/``os.setns``/``mount``: they go through libc with ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import resource
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "ppc64le": 271, "s390x": 280}
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_CLEAR = 7
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _b(path: str | Path | None) -> bytes | None:
    return None if path is None else os.fsencode(str(path))


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(nr, _b(new_root), _b(put_old)), "pivot_root")


def keyctl(op: int, arg: int = 0) -> int:
    nr = _SYS_KEYCTL.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"keyctl: unknown syscall number on {platform.machine()}")
    ret = _libc.syscall(nr, ctypes.c_long(op), ctypes.c_long(arg), ctypes.c_long(0), ctypes.c_long(0))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"keyctl({op}): {os.strerror(e)}")
    return ret


def fresh_keyrings(clear_user: bool, strict: bool) -> None:
    """A new, empty session keyring for the calling process (not the one inherited from the executor), and
    (``clear_user``) the uid's user and user-session keyrings emptied: the kernel keeps those per uid, across
    processes, so a program could leave keys there for the slot's next one. Clearing creates them when absent
    and they then stay for good, so it is done only where no filter refuses the key calls to the program.
    A kernel without keyrings, or a container whose own filter refuses the key calls (Docker's default), has
    nothing to reset; ``strict``: any other failure is an error (else the filter makes it harmless)."""
    try:
        keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0)
        if clear_user:
            keyctl(KEYCTL_CLEAR, KEY_SPEC_USER_KEYRING)
            keyctl(KEYCTL_CLEAR, KEY_SPEC_USER_SESSION_KEYRING)
    except OSError as exc:
        if strict and exc.errno not in (errno.ENOSYS, errno.EPERM):
            raise


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def set_name(name: str) -> None:
    """The process name ``ps`` and ``top`` show (PR_SET_NAME, 15 bytes)."""
    with contextlib.suppress(Exception):  # cosmetic
        buf = ctypes.create_string_buffer(name.encode()[:15])
        _libc.prctl(15, ctypes.addressof(buf), 0, 0, 0)


def no_new_privs() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("NoNewPrivs:"):
                return line.split()[1] == "1"
    except OSError:
        pass
    return False


# -- what this host allows ----------------------------------------------------------------------------------
@dataclass
class Capabilities:
    """What the executor found it can do at start-up (each tried in a throwaway child)."""

    root: bool = False
    netns: bool = False
    mntns: bool = False
    pidns: bool = False
    ipcns: bool = False
    uid_drop: bool = False
    seccomp: bool = False  # the program's system call filter loads and refuses what it should
    cgroup: str | None = None  # "v2" | "v1" | None (optional: memory and process count per slot)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def strong(self) -> bool:
        return self.root and self.netns and self.mntns and self.pidns and self.uid_drop and self.seccomp

    def missing(self) -> list[str]:
        names = {
            "root": "running as root (needed to drop each child to its own unprivileged uid)",
            "netns": "a network namespace per child (no network)",
            "mntns": "a mount namespace with a read-only minimal root and a private /tmp",
            "pidns": "a pid namespace per child (everything it starts dies with it)",
            "uid_drop": "an unprivileged uid/gid per child",
            "seccomp": "a system call filter per child (no user namespaces, keyrings, mounts, io_uring, BPF, "
                       "raw or netlink sockets)",
        }
        out = []
        for key, text in names.items():
            if not getattr(self, key):
                why = self.errors.get(key)
                out.append(f"{text}" + (f" [{why}]" if why else ""))
        return out


def _try_in_child(fn) -> str | None:
    """Run ``fn`` in a forked child; None when it worked, else the error text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            fn()
            msg = b""
        except BaseException as exc:  # noqa: BLE001
            msg = f"{type(exc).__name__}: {exc}".encode()[:500] or b"failed"
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 4096)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    if text:
        return text
    if status != 0:
        return f"probe child exited with status {status}"
    return None


def _probe_pidns() -> None:
    unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if os.getpid() == 1 else 3)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError("the first child of a new pid namespace is not pid 1")


def _probe_mntns() -> None:
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700")  # noqa: S108 - a path inside the program's private mount namespace


def _probe_uid() -> None:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    if os.getuid() != 65534:
        raise OSError("setuid did not take effect")


_FILTER: list = []  # the compiled filter, once (see program_filter)


def program_filter():
    """The compiled system call filter (``app.sandbox.seccomp.Filter``), built on first use."""
    if not _FILTER:
        from app.sandbox import seccomp

        _FILTER.append(seccomp.build())
    return _FILTER[0]


def _probe_seccomp() -> None:
    """Install the filter in this (throwaway) process, then check that a refused call is refused and that
    fork still works: the filter is judged by what it does, not by having loaded."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    program_filter().install()
    try:
        unshare(0x10000000)  # CLONE_NEWUSER
    except OSError as exc:
        if exc.errno != errno.EPERM:
            raise OSError(f"unshare(CLONE_NEWUSER) failed with {errno.errorcode.get(exc.errno)}, not EPERM") \
                from exc
    else:
        raise OSError("unshare(CLONE_NEWUSER) succeeded under the filter")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        raise OSError("fork failed under the filter")


def detect() -> Capabilities:
    from app.sandbox import cgroups

    caps = Capabilities(root=os.geteuid() == 0)
    if not caps.root:
        caps.errors["root"] = f"running as uid {os.geteuid()}"
    for key, fn in (
        ("netns", lambda: unshare(CLONE_NEWNET)),
        ("mntns", _probe_mntns),
        ("pidns", _probe_pidns),
        ("ipcns", lambda: unshare(CLONE_NEWIPC)),
        ("uid_drop", _probe_uid),
    ):
        err = _try_in_child(fn)
        setattr(caps, key, err is None)
        if err:
            caps.errors[key] = err
    try:
        program_filter()  # built here, in the executor: the zygotes and every program's process inherit it
    except (ImportError, OSError) as exc:
        err = str(exc)
    else:
        err = _try_in_child(_probe_seccomp)
    caps.seccomp = err is None
    if err:
        caps.errors["seccomp"] = err
    found = cgroups.detect()
    caps.cgroup = found.version
    if found.why:
        caps.errors["cgroup"] = found.why
    return caps


# -- the read-only root the children see ------------------------------------------------------------------
def _python_dirs() -> list[str]:
    """Directories a child's interpreter may need to read (lazy imports): the Python install and site-packages."""
    import site
    import sysconfig

    dirs = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            dirs.add(p)
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - old virtualenv
        pass
    out = []
    for d in sorted(dirs, key=len):
        d = os.path.realpath(d)
        if os.path.isdir(d) and not any(d == o or d.startswith(o + "/") for o in out):
            out.append(d)
    return out


_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_ETC_FILES = {
    "passwd": "root:x:0:0:root:/:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "resolv.conf": "",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}


HIDDEN_TMP = "/.tmp-binds"  # in the root: read-only copies of the Python directories that live under /tmp


def _under_tmp(d: str) -> bool:
    return d.startswith("/tmp/")  # noqa: S108 - a path inside the program's private mount namespace


def build_root(staging: str, extra_dirs: list[str], sources: dict[str, str] | None = None
               ) -> list[tuple[str, str]]:
    """Populate ``staging`` (a fresh tmpfs, in a private mount namespace) with read-only binds of the system
    and Python directories, a minimal /dev and /etc, and empty /proc and /tmp mount points. ``sources``: where
    to bind a directory from when its own path is covered (a venv under /tmp). Returns the (hidden copy, path)
    pairs a program's process binds again over its private /tmp."""
    sources = sources or {}
    tmp_binds: list[tuple[str, str]] = []
    os.chmod(staging, 0o755)  # noqa: S103 - the program's private root, read by its own uid
    binds: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            os.symlink(os.readlink(d), staging + d)
        elif os.path.isdir(d):
            binds.append(d)
    for d in extra_dirs:
        if not any(d == b or d.startswith(b + "/") for b in binds):
            binds.append(d)
    for d in binds:
        targets = [staging + d]
        if _under_tmp(d):  # a program's private /tmp would hide it: a second, hidden copy to bind from
            hidden = f"{HIDDEN_TMP}/{len(tmp_binds)}"
            tmp_binds.append((hidden, d))
            targets.append(staging + hidden)
        for target in targets:
            os.makedirs(target, mode=0o755, exist_ok=True)
            # Intermediate directories created by makedirs (e.g. /root for /root/.pyenv) are 0755 in the tmpfs.
            mount(sources.get(d, d), target, None, MS_BIND)
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(staging + "/dev", mode=0o755)
    mount("tmpfs", staging + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for dev in _DEVICES:
        if os.path.exists("/dev/" + dev):
            with open(f"{staging}/dev/{dev}", "w"):
                pass
            mount("/dev/" + dev, f"{staging}/dev/{dev}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{staging}/dev/{name}")
    os.mkdir(staging + "/dev/shm", 0o755)  # noqa: S108 - a path inside the program's private mount namespace
    mount(None, staging + "/dev", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    os.makedirs(staging + "/etc", mode=0o755)
    for name, text in _ETC_FILES.items():
        with open(f"{staging}/etc/{name}", "w") as f:
            f.write(text)
    for d in ("/proc", "/tmp", "/.old"):  # /proc stays empty: a program sees no process, not even itself  # noqa: S108 - a path inside the program's private mount namespace
        os.makedirs(staging + d, mode=0o755, exist_ok=True)
    return tmp_binds


def make_root_namespace() -> list[tuple[str, str]]:
    """Move the calling process into a new mount namespace whose root is the minimal read-only tree (the host's
    mounts stay untouched; only CAP_SYS_ADMIN is needed). Returns ``build_root``'s (hidden copy, path) pairs."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    dirs = _python_dirs()
    # A Python installed under /tmp (a venv on a CI runner) is reached through descriptors opened now: the
    # tmpfs about to cover /tmp hides its path.
    held = {d: os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for d in dirs if _under_tmp(d)}
    try:
        # Work under /tmp of this private namespace: nothing here is visible on the host.
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")  # noqa: S108 - a path inside the program's private mount namespace
        staging = "/tmp/root"  # noqa: S108 - a path inside the program's private mount namespace
        os.mkdir(staging)
        mount("tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        tmp_binds = build_root(staging, dirs, {d: f"/proc/self/fd/{fd}" for d, fd in held.items()})
    finally:
        for fd in held.values():
            os.close(fd)
    os.chdir(staging)
    pivot_root(".", ".old")
    os.chdir("/")
    umount("/.old", MNT_DETACH)
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return tmp_binds


# -- the child's own sequence ------------------------------------------------------------------------------
@dataclass
class ChildSetup:
    """How one candidate process isolates itself (all fields decided by the executor, none by the job)."""

    strong: bool
    uid: int
    gid: int
    netns_fd: int | None
    ipcns: bool
    cgroups: list[int]  # open cgroup.procs files of the slot (joined by writing "0")
    cpu_s: int
    address_space: int | None  # bytes on top of what the zygote already maps; None = no limit
    nproc: int
    fsize: int
    nofile: int
    tmp_bytes: int
    workdir: str | None = None  # weak mode: a private directory made by the judge
    base_vm: int = 0  # the zygote's address space size (a fork starts with the same)
    seccomp: Any = None  # app.sandbox.seccomp.Filter to install last; None: none (weak isolation, a benchmark)
    tmp_binds: list[tuple[str, str]] = field(default_factory=list)  # (copy in the root, path under /tmp)


def vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


_RESET_SIGNALS = tuple(int(s) for s in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM,
                                        signal.SIGALRM, signal.SIGXFSZ, signal.SIGXCPU))


def enter_child(setup: ChildSetup, keep_fds: list[int]) -> None:
    """Isolate the calling process (a fresh fork, still root in strong mode). Raises OSError on any failure:
    the caller must then exit without running anything."""
    import _signal  # the C module: signal.signal's enum wrapping costs more than the call

    os.setsid()
    for sig in _RESET_SIGNALS:
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
    if setup.strong:
        setns(setup.netns_fd, CLONE_NEWNET)
        # A copy of the zygote's mount namespace (the read-only root) with a fresh tmpfs of our own on /tmp: the
        # working directory, owned by our uid, gone with the namespace.
        unshare(CLONE_NEWNS | (CLONE_NEWIPC if setup.ipcns else 0))
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,  # noqa: S108 - a path inside the program's private mount namespace
              f"size={setup.tmp_bytes},nr_inodes=4096,mode=0700,uid={setup.uid},gid={setup.gid}")
        for hidden, target in setup.tmp_binds:  # the interpreter's own directories under /tmp, read-only
            os.makedirs(target, mode=0o755, exist_ok=True)
            mount(hidden, target, None, MS_BIND)
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.chdir("/")  # /tmp is entered once we are its owner (root needs no DAC capability for that)
    else:
        os.chdir(setup.workdir or "/")
    # Close every descriptor the candidate must not inherit (namespace fds, the executor's sockets...).
    keep = sorted(set(keep_fds) | {0, 1, 2})
    lo = 3
    for fd in keep:
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1
    os.closerange(lo, 1 << 16)
    limits = [
        (resource.RLIMIT_CPU, setup.cpu_s, setup.cpu_s + 1),
        (resource.RLIMIT_FSIZE, setup.fsize, setup.fsize),
        (resource.RLIMIT_NOFILE, setup.nofile, setup.nofile),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]
    if setup.strong:  # per-uid count: only meaningful when each slot has its own uid
        limits.append((resource.RLIMIT_NPROC, setup.nproc, setup.nproc))
    if setup.address_space is not None:
        total = (setup.base_vm or vm_size()) + setup.address_space
        limits.append((resource.RLIMIT_AS, total, total))
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))
    if setup.strong:
        os.setgroups([])
        os.setresgid(setup.gid, setup.gid, setup.gid)
        os.setresuid(setup.uid, setup.uid, setup.uid)
        if os.getuid() != setup.uid or os.geteuid() != setup.uid:
            raise OSError("uid drop failed")
        os.chdir("/tmp")  # noqa: S108 - a path inside the program's private mount namespace
    # In weak mode the uid is the host user's: its keys stay.
    fresh_keyrings(clear_user=setup.strong and setup.seccomp is None, strict=setup.seccomp is None)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    # Credentials changed: the parent-death signal was reset, set it again (the judge dying kills us, and
    # as pid 1 of our namespace, everything we started).
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.environ.clear()
    if setup.seccomp is not None:
        setup.seccomp.install()  # last: everything above needed calls it refuses
