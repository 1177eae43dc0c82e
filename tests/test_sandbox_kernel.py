"""The kernel surface of a program's process: the system call filter, the uid's keyrings, the per-slot cgroups
(shared memory the address-space limit does not see), a Python installed under /tmp.

Every attack runs as a real program in a real sandbox. Where a test says a protection is what stops an attack,
the same program also runs with that protection left out (``measure_without``, the benchmark's switch) and
must then get through: the test can fail.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from app.sandbox import Limits, Sandbox
from app.sandbox import cgroups as cg

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                                 reason="the attack programs know the system call numbers of x86_64 and aarch64")]

SQUARE = {"code_prefix": "", "setup_code": "", "public_tests": ["assert f(2) == 4", "assert f(3) == 9"],
          "private_tests": []}
GOOD = "def f(x):\n    return x * x\n"
COLLECT = {"code_prefix": "", "setup_code": "", "public_tests": ["__collect__(attempts())"], "private_tests": []}

# Each refused system call, tried with arguments that would not fail with EPERM for another reason where the
# call is open to an unprivileged user (a filter that let it through shows as "allowed" or another errno).
SYSCALLS = r'''
import ctypes, errno, os, platform, socket

NR = {
    "x86_64": dict(add_key=248, request_key=249, keyctl=250, clone=56, clone3=435, setns=308, unshare=272,
                   mount=165, umount2=166, pivot_root=155, chroot=161, sethostname=170, setdomainname=171,
                   ptrace=101, process_vm_readv=310, process_vm_writev=311, bpf=321, perf_event_open=298,
                   userfaultfd=323, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
                   kexec_load=246, init_module=175, finit_module=313, delete_module=176),
    "aarch64": dict(add_key=217, request_key=218, keyctl=219, clone=220, clone3=435, setns=268, unshare=97,
                    mount=40, umount2=39, pivot_root=41, chroot=51, sethostname=161, setdomainname=162,
                    ptrace=117, process_vm_readv=270, process_vm_writev=271, bpf=280, perf_event_open=241,
                    userfaultfd=282, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
                    kexec_load=104, init_module=105, finit_module=273, delete_module=106),
}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long

def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(L(NR[name]), *[L(a) if isinstance(a, int) else a for a in args])
    if r == 0 and name in ("clone", "clone3"):
        os._exit(0)  # a child made after all: gone at once
    if r > 0 and name in ("clone", "clone3"):
        os.waitpid(r, 0)
    return "allowed" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

def sock(family, kind, proto=0):
    try:
        socket.socket(family, kind, proto).close()
        return "allowed"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def attempts():
    buf = ctypes.create_string_buffer(256)
    mine = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 16)
    theirs = (ctypes.c_void_p * 2)(ctypes.addressof(buf) + 64, 16)
    out = {
        "add_key": call("add_key", b"user", b"mucode-k", b"v", 1, -4),
        "keyctl": call("keyctl", 0, -4, 0),
        "request_key": call("request_key", b"user", b"mucode-k", None, 0),
        "setns": call("setns", 0, 0),
        "mount": call("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        "umount2": call("umount2", b"/tmp", 0),
        "pivot_root": call("pivot_root", b"/tmp", b"/tmp"),
        "chroot": call("chroot", b"/tmp"),
        "sethostname": call("sethostname", b"x", 1),
        "setdomainname": call("setdomainname", b"x", 1),
        "ptrace": call("ptrace", 2, 999999, 0, 0),  # PEEKDATA of no process: ESRCH when allowed
        "process_vm_readv": call("process_vm_readv", os.getpid(), mine, 1, theirs, 1, 0),
        "process_vm_writev": call("process_vm_writev", os.getpid(), mine, 1, theirs, 1, 0),
        "bpf": call("bpf", 0xFFFF, None, 0),
        "perf_event_open": call("perf_event_open", None, 0, -1, -1, 0),
        "userfaultfd": call("userfaultfd", 1),  # UFFD_USER_MODE_ONLY
        "io_uring_setup": call("io_uring_setup", 1, ctypes.create_string_buffer(120)),
        "io_uring_enter": call("io_uring_enter", -1, 0, 0, 0, None, 0),
        "io_uring_register": call("io_uring_register", -1, 0, None, 0),
        "kexec_load": call("kexec_load", 0, 0, None, 0),
        "init_module": call("init_module", None, 0, b""),
        "finit_module": call("finit_module", -1, b"", 0),
        "delete_module": call("delete_module", b"mucode", 0),
        "socket(AF_NETLINK)": sock(socket.AF_NETLINK, socket.SOCK_RAW),
        "socket(AF_NETLINK, SOCK_DGRAM)": sock(socket.AF_NETLINK, socket.SOCK_DGRAM),
        "socket(AF_PACKET)": sock(17, socket.SOCK_RAW),
        "socket(AF_INET, SOCK_RAW|SOCK_CLOEXEC)": sock(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 1),
        "clone3": call("clone3", ctypes.create_string_buffer(b"\0" * 32 + bytes([17]) + b"\0" * 55, 88), 88),
        # last: where these work, the process is in a new user namespace from here on
        "clone(CLONE_NEWUSER)": call("clone", 0x10000000 | 17, 0, 0, 0, 0),
        "unshare(CLONE_NEWUSER)": call("unshare", 0x10000000),
    }
    return out
'''
# Where the filter is off, these work for an unprivileged program here (checked in the control run).
OPEN_WITHOUT_FILTER = ("add_key", "keyctl", "process_vm_readv", "socket(AF_NETLINK)", "unshare(CLONE_NEWUSER)",
                       "clone(CLONE_NEWUSER)")


def _collect(sb: Sandbox, code: str) -> dict:
    raw = sb.run_raw([(COLLECT, code, "public")], collect=True)[0]
    assert raw.get("collected"), raw.get("feedback") or raw.get("error")
    return raw["collected"][0]


# -- the system call filter ----------------------------------------------------------------------------------
def test_each_refused_system_call_gets_eperm_and_the_filter_is_what_refuses():
    with Sandbox(workers=1, limits=Limits(timeout_s=10)) as sb:
        assert sb.info["strong"] and sb.info["capabilities"]["seccomp"]
        seen = _collect(sb, SYSCALLS)
    expected = dict.fromkeys(seen, "EPERM")
    expected["clone3"] = "ENOSYS"  # the C library falls back to clone(), which the filter reads
    assert seen == expected
    with Sandbox(workers=1, limits=Limits(timeout_s=10), measure_without=["seccomp"]) as sb:
        assert sb.info["measured_without"] == ["seccomp"]
        control = _collect(sb, SYSCALLS)
    opened = {name: control[name] for name in OPEN_WITHOUT_FILTER}
    assert opened == dict.fromkeys(OPEN_WITHOUT_FILTER, "allowed"), control


def test_user_namespace_escape_gets_an_ordinary_verdict():
    """The issue's chain (a user namespace, then mount, chroot, sethostname inside it): the program sees
    PermissionError and is judged like any program that raises."""
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "def f(x):\n    if libc.unshare(0x10000000 | 0x20000) != 0:\n"
            "        raise PermissionError(os.strerror(ctypes.get_errno()))\n"
            "    libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)\n    return x * x\n")
    with Sandbox(workers=1, limits=Limits(timeout_s=5)) as sb:
        r = sb.run(SQUARE, code)
    assert (r.status, r.passed) == ("error", False), r.feedback  # what a program that raises gets
    assert r.tests[0]["message"].startswith("PermissionError: Operation not permitted"), r.tests


def test_a_system_call_of_another_abi_kills_the_program():
    """unshare through the x32 numbering (x86_64) is not a way around rules written for the native one."""
    if platform.machine() != "x86_64":
        pytest.skip("x32 is an x86_64 ABI")
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "def f(x):\n    if libc.syscall(0x40000000 | 272, 0x10000000) == 0:\n        return x * x\n"
            "    return x * x\n")
    with Sandbox(workers=1, limits=Limits(timeout_s=5)) as sb:
        r = sb.run(SQUARE, code)
        after = sb.run(SQUARE, GOOD)
    assert not r.passed and r.status == "error", (r.status, r.feedback)
    assert "SIGSYS" in r.feedback, r.feedback
    assert after.passed


NORMAL = r'''
import os, socket, sqlite3, subprocess, threading, numpy as np
from concurrent.futures import ThreadPoolExecutor

def f(x):
    with ThreadPoolExecutor(4) as pool:  # threads: clone3 refused, the C library falls back to clone
        squares = list(pool.map(lambda v: v * v, [x] * 4))
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert os.waitpid(pid, 0)[1] >> 8 == 7
    a, b = socket.socketpair()
    a.sendall(b"ok"); assert b.recv(2) == b"ok"
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.close()
    db = sqlite3.connect(f"t{x}.db"); db.execute("create table t (v)"); db.execute("insert into t values (1)")
    db.commit()
    out = subprocess.run(["/bin/echo", "hi"], capture_output=True).stdout
    assert out == b"hi\n", out
    t = threading.Thread(target=lambda: None); t.start(); t.join()
    return int(np.array(squares).sum() // 4)
'''


def test_normal_programs_still_work_under_the_filter():
    with Sandbox(workers=1, limits=Limits(timeout_s=10)) as sb:
        r = sb.run(SQUARE, NORMAL)
    assert r.passed, r.feedback


def test_doctor_probe_reports_the_filter_from_what_a_program_saw():
    from app.sandbox.probe import PROBE_CODE, evaluate, probe_protections

    checks = {c.name: c for c in probe_protections()}
    assert checks["seccomp"].ok, checks["seccomp"].detail
    assert "unshare(CLONE_NEWUSER): EPERM" in checks["seccomp"].detail
    assert "socket(AF_NETLINK): EPERM" in checks["seccomp"].detail
    assert checks["interpreter visible"].ok, checks["interpreter visible"].detail
    # The judge's limit, tried with a program that floods the tests: stopped as 'memory', judge far below it.
    judge = checks["judge memory limit"]
    assert judge.ok and "stopped as 'memory'" in judge.detail, judge.detail
    from app.sandbox.probe import judge_limit_check

    assert not judge_limit_check({"status": "sandbox_error", "judge": {}}).ok
    assert not judge_limit_check({"status": "memory", "judge": {"memory_limit": 1 << 30,
                                                                "peak_rss_kb": 2 << 20}}).ok
    # The same probe program in a sandbox without the filter: the check fails, on what the program saw.
    problem = {"public_tests": ["__collect__(probe('/nonexistent', 5432))"], "private_tests": []}
    with Sandbox(workers=1, limits=Limits(timeout_s=10), measure_without=["seccomp"]) as sb:
        raw = sb.run_raw([(problem, PROBE_CODE, "public")], collect=True)[0]
        info = sb.info
    off = {c.name: c for c in evaluate(raw["collected"][0], info, Limits(timeout_s=10), db_port=5432,
                                       host_uid=os.getuid())}
    assert not off["seccomp"].ok and "unshare(CLONE_NEWUSER): allowed" in off["seccomp"].detail


def test_missing_filter_refuses_to_start_unless_weak_isolation_is_allowed():
    from app.sandbox import SandboxUnavailable

    with pytest.raises(SandboxUnavailable, match="system call filter"):
        Sandbox(workers=1, pretend_missing=["seccomp"], allow_weak_isolation=False).start()


# -- keyrings ------------------------------------------------------------------------------------------------
KEY_STORE = SYSCALLS + r'''
def store():
    out = {}
    for where, ring in (("user", -4), ("user-session", -5), ("session", -3)):
        ctypes.set_errno(0)
        r = libc.syscall(L(NR["add_key"]), b"user", b"mucode-leak", b"secret-7f3a", L(11), L(ring))
        out[where] = "stored" if r > 0 else errno.errorcode.get(ctypes.get_errno())
    return out
'''
KEY_FIND = SYSCALLS + r'''
def find():
    found = {}
    for where, ring in (("user", -4), ("user-session", -5), ("session", -3)):
        ctypes.set_errno(0)
        key = libc.syscall(L(NR["keyctl"]), L(10), L(ring), b"user", b"mucode-leak", L(0))  # KEYCTL_SEARCH
        if key > 0:
            buf = ctypes.create_string_buffer(64)
            n = libc.syscall(L(NR["keyctl"]), L(11), L(key), buf, L(64))  # KEYCTL_READ
            found[where] = buf.raw[:max(n, 0)].decode(errors="replace")
    return found
'''


def _keyring_round(**kw) -> tuple[dict, dict]:
    store = {**COLLECT, "public_tests": ["__collect__(store())"]}
    find = {**COLLECT, "public_tests": ["__collect__(find())"]}
    with Sandbox(workers=1, limits=Limits(timeout_s=10), **kw) as sb:  # one slot: one uid for both programs
        stored = sb.run_raw([(store, KEY_STORE, "public")], collect=True)[0]["collected"][0]
        found = sb.run_raw([(find, KEY_FIND, "public")], collect=True)[0]["collected"][0]
    return stored, found


def test_a_key_stored_by_one_program_is_not_found_by_the_next():
    stored, found = _keyring_round()
    assert stored == {"user": "EPERM", "user-session": "EPERM", "session": "EPERM"}
    assert found == {}


def test_fresh_keyrings_alone_stop_the_channel():
    """Without the filter the keys are stored, and still gone for the next program: its session keyring is new
    and its uid's user keyrings were emptied before it started."""
    stored, found = _keyring_round(measure_without=["seccomp"])
    assert stored == {"user": "stored", "user-session": "stored", "session": "stored"}
    assert found == {}


# -- memory the address-space limit does not see -----------------------------------------------------------
SHM = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
libc.shmdt.argtypes = (ctypes.c_void_p,)
CHUNK = 64 << 20

def hoard(total):
    """SysV shared memory: attach, fill, detach. Each segment is mapped only while it is filled, so the
    address-space limit sees 64 MB at a time; the segments stay, with their pages."""
    held = 0
    while held < total:
        sid = libc.shmget(0, CHUNK, 0o1000 | 0o600)
        if sid < 0:
            raise MemoryError("shmget: " + os.strerror(ctypes.get_errno()))
        addr = libc.shmat(sid, None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise MemoryError("shmat: " + os.strerror(ctypes.get_errno()))
        ctypes.memset(addr, 1, CHUNK)
        libc.shmdt(addr)
        held += CHUNK
    return held
'''
LIMITS = Limits(timeout_s=20, memory_mb=256)  # the slot's cgroup: 256 + 64 (tmp) + 256 MiB
HOARD = 1 << 30


def test_shared_memory_past_the_limit_is_a_memory_verdict():
    at_load = SHM + f"hoard({HOARD})\ndef f(x):\n    return x * x\n"
    # Another way to hold it: a child process hoards while the program answers (and waits for it).
    in_child = SHM + ("def f(x):\n    pid = os.fork()\n    if pid == 0:\n"
                      f"        hoard({HOARD})\n        os._exit(0)\n    os.waitpid(pid, 0)\n    return x * x\n")
    small = SHM + "hoard(128 << 20)\ndef f(x):\n    return x * x\n"  # under the limit: an honest program
    with Sandbox(workers=1, limits=LIMITS) as sb:
        assert sb.info["cgroups"], sb.info.get("cgroup_error") or sb.info["capabilities"]["errors"]
        res = sb.run_many([(SQUARE, at_load, "public"), (SQUARE, GOOD, "public"), (SQUARE, in_child, "public"),
                           (SQUARE, small, "public"), (SQUARE, GOOD, "public")])
    hoard_load, after, hoard_child, honest, last = res
    assert (hoard_load.status, hoard_load.passed) == ("memory", False), (hoard_load.status, hoard_load.feedback)
    assert "ran out of memory" in hoard_load.feedback
    assert (hoard_child.status, hoard_child.passed) == ("memory", False), (hoard_child.status,
                                                                             hoard_child.feedback)
    # The slot's next programs start from an empty cgroup (the hoard went with the program's IPC namespace).
    assert after.passed and honest.passed and last.passed, (after.feedback, honest.feedback, last.feedback)


def test_a_slot_waits_for_the_last_programs_memory_to_be_freed(tmp_path):
    """The kernel frees a dead program's shared memory a little after its last process is gone: the slot's
    next program starts once the charge is down (or after the timeout), never on the stale count."""
    import threading

    usage = tmp_path / "memory.current"
    usage.write_text(str(600 << 20))
    fd = os.open(usage, os.O_RDONLY)
    try:
        timer = threading.Timer(0.15, lambda: usage.write_text(str(1 << 20)))
        timer.start()
        t0 = time.monotonic()
        assert cg.settle(fd, 36 << 20) == 1 << 20
        assert 0.1 < time.monotonic() - t0 < 0.9
        usage.write_text(str(600 << 20))  # never freed: the wait ends at the timeout with what is left
        t0 = time.monotonic()
        assert cg.settle(fd, 36 << 20, timeout_s=0.2) == 600 << 20
        assert time.monotonic() - t0 >= 0.2
    finally:
        os.close(fd)


# -- cgroup v2 -----------------------------------------------------------------------------------------------
def test_cgroup_v2_makes_room_for_controllers_by_moving_processes_to_a_leaf():
    """The "no internal processes" rule, on this host's real cgroup2 hierarchy: a cgroup holding a process
    cannot enable a controller for its children; ``enable_controllers`` moves its processes into the leaf
    ``mucode-host`` and then can. Uses a controller the hierarchy offers (a hybrid host offers few; the root's
    own subtree_control is restored afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    home = cg.v2_home()
    if home is None:
        pytest.skip("no cgroup v2 hierarchy on this host")
    offered = (home / "cgroup.controllers").read_text().split()
    if not offered:
        pytest.skip("the cgroup v2 hierarchy offers no controller here")
    controller = "pids" if "pids" in offered else offered[0]
    parent_ctl = home / "cgroup.subtree_control"
    enabled_before = controller in parent_ctl.read_text().split()
    test = home / f"mucode-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    sleeper = None
    try:
        if not enabled_before:
            parent_ctl.write_text(f"+{controller}")
        test.mkdir()
        sleeper = subprocess.Popen(["sleep", "60"])
        (test / "cgroup.procs").write_text(str(sleeper.pid))
        with pytest.raises(OSError):  # the rule itself, as the kernel applies it
            (test / "cgroup.subtree_control").write_text(f"+{controller}")
        cg.enable_controllers(test, (controller,))
        assert controller in (test / "cgroup.subtree_control").read_text().split()
        assert (test / "cgroup.procs").read_text().split() == []
        assert str(sleeper.pid) in (test / cg.HOST_LEAF / "cgroup.procs").read_text().split()
        slot = test / "slot0"  # a slot's leaf takes a process and gets the controller's files
        slot.mkdir()
        assert (slot / f"{controller}.max").exists() or controller not in ("pids", "memory")
        (slot / "cgroup.procs").write_text(str(sleeper.pid))
        assert Path(f"/proc/{sleeper.pid}/cgroup").read_text().strip().endswith(f"/{test.name}/slot0")
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        for d in (test / "slot0", test / cg.HOST_LEAF, test):
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        if not enabled_before:
            parent_ctl.write_text(f"-{controller}")


def test_cgroup_detection_names_the_version_and_why():
    found = cg.detect()
    if os.geteuid() != 0:
        assert found.version is None
        return
    assert found.version in ("v1", "v2", None)
    if found.version != "v2":
        assert found.why  # the reason v2 was not taken is reported (doctor shows it)
    assert cg.oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n") == 2
    assert cg.oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n") == 5


# -- a Python installed under /tmp -------------------------------------------------------------------------------
RUN_IN_VENV = r'''
import json, sys
from app.sandbox import Limits, Sandbox, SandboxUnavailable
try:
    Sandbox(workers=1, allow_weak_isolation=False).start().close()
except SandboxUnavailable as exc:
    print(json.dumps({"refused": str(exc)}))
    sys.exit(0)
problem = {"code_prefix": "import mucode_tmp_mod\n", "setup_code": "", "private_tests": [],
           "public_tests": ["assert f(2) == mucode_tmp_mod.VALUE"]}
with Sandbox(workers=1, limits=Limits(timeout_s=10), allow_weak_isolation=False) as sb:
    r = sb.run(problem, "def f(x):\n    return x * 21\n")
    print(json.dumps({"prefix": sys.prefix, "status": r.status, "feedback": r.feedback}))
'''


def test_a_python_under_tmp_is_visible_inside():
    """A venv under /tmp (as on CI runners): the program's private /tmp must not hide the interpreter's own
    directories, or every program that imports from them fails as an error. Before the sandbox's seccomp binding
    is installed in that venv, the sandbox refuses to start and says what is missing."""
    import pyseccomp

    base = getattr(sys, "_base_executable", sys.executable)
    venv = Path("/tmp", f"mucode-venv-{uuid.uuid4().hex[:8]}")
    try:
        subprocess.run([base, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                       timeout=120)
        site = next(venv.glob("lib/python3*/site-packages"))
        (site / "mucode_tmp_mod.py").write_text("VALUE = 42\n")
        root = str(Path(__file__).resolve().parents[1])

        def run() -> dict:
            proc = subprocess.run([str(venv / "bin" / "python"), "-c", RUN_IN_VENV], check=False,
                                  capture_output=True, text=True, timeout=180, cwd="/",
                                  env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": root})
            assert proc.returncode == 0, proc.stderr[-3000:]
            return json.loads(proc.stdout.strip().splitlines()[-1])

        base_lacks_binding = subprocess.run([str(venv / "bin" / "python"), "-c", "import pyseccomp"], check=False,
                                            capture_output=True, timeout=60).returncode != 0
        first = run()  # the venv sees the base interpreter's packages only
        shutil.copy(pyseccomp.__file__, site)  # the sandbox's own dependency, installed in this venv
        out = run()
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    if "refused" in first or base_lacks_binding:
        assert "system call filter" in first["refused"] and "pyseccomp" in first["refused"], first
    assert out["prefix"] == str(venv)
    assert out["status"] == "passed", out["feedback"]


def test_a_read_only_cgroup2_mount_is_made_writable_in_a_private_namespace():
    """A container's /sys/fs/cgroup is a read-only mount: the executor makes it writable in a mount namespace of
    its own. Here: a child process makes this host's cgroup2 mount read-only the way container runtimes do (a
    read-only bind remount, in its own mount namespace: the host's stays as it is), then asks for it back."""
    if os.geteuid() != 0 or cg.v2_home() is None:
        pytest.skip("needs root and a cgroup v2 hierarchy")
    script = r'''
import os, sys
from app.sandbox import cgroups as cg, isolation as iso
point = next(p for p, fs, _ in cg._mounts() if fs == "cgroup2")
iso.unshare(iso.CLONE_NEWNS)
iso.mount(None, "/", None, iso.MS_REC | iso.MS_PRIVATE)
iso.mount(point, point, None, iso.MS_BIND)
iso.mount(None, point, None, iso.MS_REMOUNT | iso.MS_BIND | iso.MS_RDONLY)
before = os.access(point, os.W_OK)
did = cg.remount_v2_writable()
home = cg.v2_home()
print(before, did, os.access(point, os.W_OK), home is not None and os.access(home, os.W_OK))
'''
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60,
                          cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "True", "True", "True"]


def test_doctor_lists_the_filter_and_the_cgroups():
    from app.doctor import check_sandbox

    rows = {r.name: r for r in check_sandbox(required=True)}
    assert rows["sandbox seccomp"].ok and rows["sandbox seccomp"].required, rows["sandbox seccomp"].detail
    assert "unshare(CLONE_NEWUSER): EPERM" in rows["sandbox seccomp"].detail
    cgroup = rows["sandbox cgroup limits"]
    assert not cgroup.required and cgroup.detail
    if cgroup.ok:
        assert "cgroup v1" in cgroup.detail or "cgroup v2" in cgroup.detail


def test_an_executor_sweeps_the_cgroups_a_dead_one_left_behind():
    """An executor killed outright never removes its slots' cgroups: the next one to start does, and only
    those whose executor is gone."""
    found = cg.detect()
    if found.version is None:
        pytest.skip(f"no usable cgroup here: {found.why}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    stale = cg.SlotCgroups(found.version, cg.executor_tag(dead.pid), found.home)
    kept = cg.SlotCgroups(found.version, cg.executor_tag(alive.pid), found.home)
    try:
        for made in (stale, kept):
            made.make(1, 64 << 20, 8)
        assert all(d.is_dir() for d in stale.dirs() + kept.dirs())
        with Sandbox(workers=1, limits=Limits(timeout_s=5)) as sb:
            assert sb.run(SQUARE, GOOD).passed
        assert not any(d.exists() for d in stale.dirs())
        assert all(d.is_dir() for d in kept.dirs())
    finally:
        alive.kill()
        alive.wait()
        stale.remove()
        kept.remove()
