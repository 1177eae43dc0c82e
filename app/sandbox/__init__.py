"""The sandbox: run untrusted model-written programs against test suites and decide verdicts they cannot forge.

Threat model. The candidate program is hostile: it may exit early, print anything, patch builtins, return
objects with a rigged ``__eq__``, write to any descriptor it holds, signal or kill processes, fork-bomb, eat
memory, loop, sleep, flood output, recurse, leave threads and processes behind, read the environment, open
sockets and write anywhere it can. It must never reach the database, the network, the host's files or another
run, and it must never make itself look correct. Trusted: the executor, its zygote and the judges (they run
only our code and the datasets' test code); the datasets themselves.

Design. A long-lived executor (``executor.py``, no DB connection, started with an empty environment) forks a
zygote that has imported the stdlib (and numpy) before any job exists. Per program the zygote forks a *judge*,
which at once forks the *candidate's process* (so that process is a clean copy: no test, no expected value, no
other program in its memory) and then reads its job. The candidate's process (``child.py``) only loads the
program and answers requests; the judge (``judge.py``) runs the prefix, the setup and every test statement in
its own interpreter, where the program's functions and classes are proxies (``ProgramObject``). A call from a
test is a request; the answer is plain data (None, bool, int, float, complex, str, bytes, list, tuple, dict,
set, frozenset, nested), decoded by ``wire.py`` into objects of exactly those builtin types, so ``assert
f(x) == expected`` is compared by the judge with the builtin types' own ``==``; a non-plain result stays in the
candidate's process and equals nothing but itself. A test passes only when the judge finishes its statement
without an exception: an exit, a print, a patched builtin or bytes written to any descriptor change nothing in
the judge. Isolation of the candidate's process (``isolation.py``): own pid namespace (pid 1: when it dies,
everything it started dies), own empty network namespace per slot (no interface up: connecting to
127.0.0.1:5432 fails), own mount namespace whose root is a read-only minimal tree (system and Python
directories only: no repo, no /root, no DB files) with a private tmpfs /tmp as working directory (gone with
the namespace), own IPC namespace, an unprivileged uid/gid per slot, no_new_privs, rlimits on CPU, address
space, processes, file size (stdout/stderr are memfds, so output is capped by the kernel, never buffered past
the cap) and open files, an empty environment, the judge's wall-clock deadline, and a per-slot memory/pids
cgroup where the host has cgroups v1. Without root or namespaces the executor says what is missing and refuses
to start unless ``allow_weak_isolation`` is set.

Residual risks: kernel bugs; a program can read world-readable files of the Python installation; the
arguments a test passes to a program's function are visible to that program (tests that pass the expected
value as an argument reveal it).
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
