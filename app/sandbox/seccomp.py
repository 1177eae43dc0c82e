"""The system call filter of a program's process: the kernel's escalation surface answers EPERM.

Namespaces, a dropped uid and rlimits leave a program every system call an unprivileged user has, and some of
those are how kernel exploits start or how data outlives a program: a user namespace (where the program is root
again and can mount, chroot, set the host name, open raw and netfilter sockets), the kernel keyrings (kept per
uid, so a slot's next program could read what this one stored), io_uring, BPF, perf events, userfaultfd,
ptrace. The filter refuses them with EPERM (the program sees an ordinary error and gets an ordinary verdict);
everything else is allowed, so NumPy, threads, ``fork`` and the standard library work as before.

It is written with libseccomp (through ``pyseccomp``, its ctypes binding: the same API as libseccomp's own
Python module, which exists only for the system interpreter). libseccomp compiles the rules once, in the zygote;
each program's process then installs the compiled filter with one ``prctl`` (``seccomp_load`` would compile it
again in every process, about twice the cost per program).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass

# Refused outright: no program of a benchmark needs them, and each is a way to gain privileges, to reach the
# kernel's less-travelled code, to look into another process or to leave state behind for the next program.
REFUSED = (
    # namespaces (a user namespace gives back every capability inside it)
    "unshare", "setns",
    # kernel keyrings: per uid, they outlive the program
    "add_key", "keyctl", "request_key",
    # mounts and the root
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr",
    "sethostname", "setdomainname",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # the kernel's big attack surfaces
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    # the machine's own settings (they need capabilities a program never has: refused before the kernel looks)
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "iopl", "ioperm", "open_by_handle_at",
    "name_to_handle_at", "fanotify_init", "lookup_dcookie", "settimeofday", "clock_settime", "clock_adjtime",
    "vhangup", "uselib",
)
# The ones every host's libseccomp must know (a missing one is an error, not a silent gap).
ESSENTIAL = ("unshare", "setns", "add_key", "keyctl", "request_key", "mount", "umount2", "pivot_root", "chroot",
             "sethostname", "setdomainname", "ptrace", "process_vm_readv", "process_vm_writev", "bpf",
             "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
             "kexec_load", "init_module", "finit_module", "delete_module", "clone", "socket")

CLONE_NAMESPACES = {  # clone() flags that make a namespace
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
AF_NETLINK = 16
AF_PACKET = 17
SOCK_RAW = 3
SOCK_TYPE_MASK = 0xF  # the type argument also carries SOCK_NONBLOCK and SOCK_CLOEXEC

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong)


@dataclass
class Filter:
    """A compiled filter, ready to install (the buffers stay alive with this object: a fork copies them)."""

    program: bytes
    refused: tuple[str, ...]

    def __post_init__(self) -> None:
        self._buf = ctypes.create_string_buffer(self.program, len(self.program))
        self._prog = _SockFprog(len(self.program) // 8, ctypes.addressof(self._buf))
        self._addr = ctypes.addressof(self._prog)

    def install(self) -> None:
        """Install in the calling process (after PR_SET_NO_NEW_PRIVS); every thread and child it makes later
        inherits it, and nothing can remove it."""
        if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self._addr, 0, 0) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"installing the seccomp filter: {os.strerror(e)}")


def build() -> Filter:
    """Compile the filter with libseccomp. Raises OSError (ImportError when the binding or the library is
    missing) naming what failed."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: the binding found no libseccomp
        raise ImportError(f"libseccomp's Python binding is not usable ({exc}): install the pyseccomp package and "
                          "the libseccomp2 library (Debian/Ubuntu: apt-get install libseccomp2)") from exc
    eperm = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    # A system call of another ABI (i386's int 0x80 on x86_64) would bypass rules written for the native one:
    # such a call kills the process instead.
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    refused = []

    def number(name: str) -> int | None:
        nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if nr < 0:  # unknown, or not a system call of this architecture (iopl on aarch64)
            if name in ESSENTIAL:
                raise OSError(errno.ENOSYS, f"libseccomp does not know the system call {name}")
            return None
        return nr

    for name in REFUSED:
        nr = number(name)
        if nr is not None:
            f.add_rule(eperm, nr)
            refused.append(name)
    # clone(): only with a namespace flag (threads and fork use it too). s390's clone takes the flags second.
    flags_arg = 1 if platform.machine().startswith("s390") else 0
    clone = number("clone")
    for flag in CLONE_NAMESPACES.values():
        f.add_rule(eperm, clone, sc.Arg(flags_arg, sc.MASKED_EQ, flag, flag))
    refused.append("clone(namespace flags)")
    # clone3() passes its flags in memory, where a filter cannot read them: ENOSYS makes the C library fall back
    # to clone(), which is checked above (the same choice as the usual container runtimes' profiles).
    clone3 = sc.resolve_syscall(sc.Arch.NATIVE, "clone3")
    if clone3 >= 0:
        f.add_rule(sc.ERRNO(errno.ENOSYS), clone3)
        refused.append("clone3 (ENOSYS)")
    sock = number("socket")
    for family in (AF_NETLINK, AF_PACKET):
        f.add_rule(eperm, sock, sc.Arg(0, sc.EQ, family))
    f.add_rule(eperm, sock, sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, SOCK_RAW))
    refused.append("socket(AF_NETLINK | AF_PACKET | SOCK_RAW)")
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    with open(fd, "w+b") as out:
        f.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, f"libseccomp exported a filter of {len(program)} bytes")
    return Filter(program, tuple(refused))
