"""The sandbox: run untrusted model-written programs against test suites and decide verdicts they cannot forge.

Threat model. The program is hostile: it may exit early, print anything, patch builtins, return objects with a
rigged ``__eq__``, write to any descriptor it holds, signal or kill processes, fork-bomb, eat memory, loop,
sleep, flood its output, recurse, leave threads and processes behind, read its environment, open sockets and
write anywhere it can. It must never reach the database, the network, the host's files or another run, and it
must never make itself look correct. Trusted: the executor, its zygote and the judges (they run only our code
and the datasets' test code), and the datasets.

Design (``executor.py``). A long-lived executor (no database connection, started with an empty environment)
forks a zygote that imports the stdlib and NumPy before any job exists. Per program the zygote forks the
*program's process*, a clean copy holding no test, no expected value and no other program; a long-lived
*judge* per slot (``judge.py``) runs the problem's prefix, the setup and every test statement (compiled once
per suite, ``suite.py``) in its own interpreter, where the program's functions and classes are proxies
(``remote.py``). Calling one is a request to the program's process (``child.py``; a test loop's calls go out
ahead of it, ``prefetch.py``), whose answer is plain data -- None, bool, int, float, complex, str, bytes,
list, tuple, dict, set, frozenset, nested -- decoded (``wire.py``) into objects of exactly those builtin
types, so ``assert f(x) == expected`` is decided by the judge with the builtin types' own ``==``; anything
else stays in the program's process and equals nothing but itself. A test passes only when the judge runs its
statement to the end: an exit, a print, a patched builtin or bytes written to a descriptor change nothing
there.

Isolation of the program's process (``isolation.py``): pid 1 of its own pid namespace (when it ends,
everything it started is killed and reaped), its slot's empty network namespace (no interface: connecting to
127.0.0.1:5432 fails), a read-only minimal root (system and Python directories only: no checkout, no /root,
no database file, no /proc) with the slot's private tmpfs as working directory (emptied before each program),
its own IPC namespace, the slot's unprivileged uid/gid, no_new_privs, rlimits on CPU, address space,
processes, file size (stdout/stderr are memfds, so output is capped by the kernel, never buffered past it)
and open files, an empty environment, the judge's wall-clock deadline, a fresh session keyring, a system
call filter installed last (``seccomp.py``: EPERM for namespaces, keyrings, mounts, ptrace, BPF, io_uring, raw
and netlink sockets...), and per-slot memory and pids cgroups on cgroup v2 or v1 hosts (``cgroups.py``; a
kill by the memory limit is a ``memory`` verdict). Where root, namespaces or the filter are missing the
executor says what is missing and refuses to start unless ``allow_weak_isolation`` is set.

Residual risks: kernel bugs; a program can read the world-readable files of the Python installation; the
arguments a test passes to a program's function are visible to it (a test that passes its expected value as
an argument reveals it); a name the tests use but only the program defines (``math`` imported by the program
and not by the test) is the program's choice, as in any single-process harness.
"""

from app.sandbox.client import Sandbox, get_sandbox, run_suite
from app.sandbox.probe import probe_protections
from app.sandbox.types import (
    SANDBOX_VERSION,
    Check,
    ExecutionResult,
    InfraError,
    Limits,
    SandboxError,
    SandboxUnavailable,
)

__all__ = [
    "SANDBOX_VERSION",
    "Check",
    "ExecutionResult",
    "InfraError",
    "Limits",
    "Sandbox",
    "SandboxError",
    "SandboxUnavailable",
    "get_sandbox",
    "probe_protections",
    "run_suite",
]
