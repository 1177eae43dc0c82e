"""``probe_protections()``: run a real program through the sandbox that tries to break each protection.

Nothing is taken from configuration: the probe program connects to the database port, reads its environment,
looks at its uid, limits, working directory and file system, and the checks compare what it saw with what the
sandbox promises.
"""

from __future__ import annotations

from typing import Any

from app.sandbox.types import Check, Limits

PROBE_CODE = r'''
import os, socket, resource, sys, sysconfig

def probe(host_file, db_port):
    seen = {}
    for port in (db_port, 6379):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
            seen["connect_%d" % port] = "connected"
        except OSError as exc:
            seen["connect_%d" % port] = "refused: %s" % exc
        finally:
            s.close()
    seen["uid"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid()]
    seen["groups"] = os.getgroups()
    seen["env"] = dict(os.environ)
    seen["pid"] = os.getpid()
    names = {"cpu": resource.RLIMIT_CPU, "as": resource.RLIMIT_AS, "nproc": resource.RLIMIT_NPROC,
             "fsize": resource.RLIMIT_FSIZE, "nofile": resource.RLIMIT_NOFILE}
    seen["rlimits"] = {k: list(resource.getrlimit(v)) for k, v in names.items()}
    seen["cwd"] = os.getcwd()
    seen["cwd_entries"] = os.listdir(".")
    with open("probe.txt", "w") as f:
        f.write("x")
    seen["cwd_writable"] = os.path.exists("probe.txt")
    outside = {}
    for path in ("/etc/mucode-probe", "/usr/mucode-probe", "/mucode-probe", "/var/tmp/mucode-probe",
                 "/dev/shm/mucode-probe"):
        try:
            with open(path, "w") as f:
                f.write("x")
            outside[path] = "written"
        except OSError as exc:
            outside[path] = type(exc).__name__
    seen["write_outside"] = outside
    try:
        with open(host_file, "rb") as f:
            f.read(1)
        seen["host_file"] = "readable"
    except OSError as exc:
        seen["host_file"] = type(exc).__name__
    try:
        import ctypes
        seen["no_new_privs"] = str(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))  # PR_GET_NO_NEW_PRIVS
    except Exception as exc:
        seen["no_new_privs"] = type(exc).__name__
    try:
        seen["visible_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:20]
    except OSError:
        seen["visible_pids"] = []
    seen["python_dirs"] = {p: os.path.isdir(p) for p in sorted({sysconfig.get_paths()[k] for k in
                           ("stdlib", "platstdlib", "purelib", "platlib")})}
    seen["kernel"] = kernel_surface()  # last: an unshare that worked changes what the checks above would see
    return seen

def kernel_surface():
    """What the system call filter must refuse: the errno of each attempt, or "allowed"."""
    import ctypes, errno, platform
    libc = ctypes.CDLL(None, use_errno=True)
    def attempt(call):
        ctypes.set_errno(0)
        ok = call() >= 0
        return "allowed" if ok else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    out = {}
    add_key = {"x86_64": 248, "aarch64": 217, "ppc64le": 269, "s390x": 278}.get(platform.machine())
    if add_key is not None:
        out["add_key"] = attempt(lambda: libc.syscall(add_key, b"user", b"mucode-probe", b"x",
                                                      ctypes.c_size_t(1), ctypes.c_int(-4)))
    for name, family, kind in (("socket(AF_NETLINK)", 16, socket.SOCK_RAW), ("socket(AF_PACKET)", 17,
                               socket.SOCK_RAW), ("socket(AF_INET, SOCK_RAW)", socket.AF_INET, socket.SOCK_RAW)):
        try:
            socket.socket(family, kind, 0).close()
            out[name] = "allowed"
        except OSError as exc:
            out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    out["unshare(CLONE_NEWUSER)"] = attempt(lambda: libc.unshare(0x10000000))
    return out
'''


def _db_port() -> int:
    try:
        from sqlalchemy.engine import make_url

        from app.config import get_settings

        url = make_url(get_settings().database_url)
    except Exception:  # noqa: BLE001 - no settings: the default port
        return 5432
    return int(url.port or 5432) if url.get_backend_name() == "postgresql" else 5432


def _host_file() -> str:
    """A file of this checkout: readable on the host, must not be from inside the sandbox."""
    from pathlib import Path

    return str(Path(__file__).resolve())


def evaluate(seen: dict[str, Any], info: dict[str, Any], limits: Limits, *, db_port: int, host_uid: int
             ) -> list[Check]:
    checks: list[Check] = []
    strong = bool(info.get("strong"))
    conn = seen.get(f"connect_{db_port}", "?")
    checks.append(Check("network", not str(conn).startswith("connected"),
                        f"connect to 127.0.0.1:{db_port} from inside: {conn}"))
    uid = seen.get("uid", [None] * 4)
    checks.append(Check("unprivileged uid", bool(uid[0]) and uid[0] != host_uid and not seen.get("groups"),
                        f"uid/euid/gid/egid {uid}, groups {seen.get('groups')}"))
    env = seen.get("env", {})
    checks.append(Check("empty environment", env == {}, f"{len(env)} variables" + (
        f" ({', '.join(sorted(env)[:8])})" if env else "")))
    rl = seen.get("rlimits", {})
    want = {"cpu": limits.cpu_s, "fsize": limits.output_bytes, "nofile": limits.nofile}
    if strong:
        want["nproc"] = limits.nproc
    bad = [k for k, v in want.items() if rl.get(k, [None])[0] != v]
    as_ok = rl.get("as", [-1])[0] not in (-1, None)
    address = f"{rl['as'][0] >> 20} MiB" if as_ok else "unlimited"
    checks.append(Check("resource limits", not bad and as_ok,
                        f"cpu {rl.get('cpu', ['?'])[0]}s, address space {address}, processes "
                        f"{rl.get('nproc', ['?'])[0]}, file size {(rl.get('fsize', [0])[0] or 0) >> 10} KiB, "
                        f"open files {rl.get('nofile', ['?'])[0]}" + (f"; not as configured: {bad}" if bad else "")))
    # The interpreter's directories under /tmp (a venv there) are bound into each program's private /tmp, so
    # their mount points are the only entries a fresh working directory may have.
    cwd = str(seen.get("cwd") or "/tmp").rstrip("/") + "/"  # noqa: S108 - a path inside the program's private mount namespace
    bound = {d[len(cwd):].split("/")[0] for d in seen.get("python_dirs") or {} if d.startswith(cwd)}
    entries = seen.get("cwd_entries")
    left = None if entries is None else [e for e in entries if e not in bound]
    checks.append(Check("private working directory", left == [] and seen.get("cwd_writable") is True,
                        f"started empty: {left == []}" + (f" (leftovers: {left[:5]})" if left else "")
                        + (f" but for the interpreter's mount points {sorted(bound)}" if bound else "")
                        + f", writable: {seen.get('cwd_writable')}"))
    outside = seen.get("write_outside", {})
    written = [p for p, r in outside.items() if r == "written"]
    checks.append(Check("file system", not written and seen.get("host_file") != "readable",
                        ("wrote " + ", ".join(written) if written else "writes outside the working directory "
                         "fail") + f"; a host file of the checkout: {seen.get('host_file')}"))
    pids = seen.get("visible_pids", [])
    checks.append(Check("process isolation", seen.get("pid") == 1 and set(pids) <= {1},
                        f"pid {seen.get('pid')} in its own namespace; other processes visible: "
                        f"{[p for p in pids if p != 1][:5] or 'none'}"))
    checks.append(Check("no new privileges", seen.get("no_new_privs") == "1",
                        f"NoNewPrivs {seen.get('no_new_privs')}"))
    kernel = seen.get("kernel") or {}
    refused = bool(kernel) and all(v == "EPERM" for v in kernel.values())
    checks.append(Check("seccomp", refused, ", ".join(f"{k}: {v}" for k, v in kernel.items()) if kernel
                        else "not observed"))
    dirs = seen.get("python_dirs") or {}
    hidden = [p for p, ok in dirs.items() if not ok]
    checks.append(Check("interpreter visible", bool(dirs) and not hidden,
                        f"the interpreter's directories are readable inside: {', '.join(dirs)}" if not hidden
                        else f"hidden inside the sandbox: {', '.join(hidden)} (programs cannot import from them)"))
    version = info.get("cgroup_version")
    caps_errors = (info.get("capabilities") or {}).get("errors") or {}
    checks.append(Check("cgroup limits", bool(info.get("cgroups")),
                        f"per-slot memory and process cgroups (cgroup {version}); a kill by the memory limit is "
                        "reported as memory" if info.get("cgroups")
                        else "not available (rlimits still apply; shared memory is not limited): "
                        + (info.get("cgroup_error") or caps_errors.get("cgroup") or "no cgroup found"),
                        required=False))
    return checks


def probe_protections(limits: Limits | None = None) -> list[Check]:
    """Start a sandbox (allowed to be weak, so it can report what is missing), run the probe program in it and
    return one Check per protection. ``ok`` is what was observed, not what was configured."""
    import os

    from app.sandbox.client import Sandbox
    from app.sandbox.types import InfraError

    limits = limits or Limits(timeout_s=10.0)
    port = _db_port()
    problem = {"public_tests": [f"__collect__(probe({_host_file()!r}, {port}))"], "private_tests": []}
    with Sandbox(workers=1, limits=limits, allow_weak_isolation=True) as sb:
        info = sb.info
        raw = sb.run_raw([(problem, PROBE_CODE, "public")], collect=True)[0]
        flood = sb.run_raw([(JUDGE_PROBE_PROBLEM, JUDGE_PROBE_CODE, "public")])[0]
    checks = [Check("isolation", bool(info.get("strong")),
                    "all protections available" if info.get("strong")
                    else "WEAK, missing: " + "; ".join(info.get("missing", [])))]
    if raw.get("status") == "sandbox_error" or not raw.get("collected"):
        detail = raw.get("error") or raw.get("feedback") or "no observation"
        if raw.get("status") == "sandbox_error":
            raise InfraError(f"the sandbox probe could not run: {detail}")
        checks.append(Check("probe", False, f"the probe program did not report: {detail[:300]}"))
        return checks
    return (checks + evaluate(raw["collected"][0], info, limits, db_port=port, host_uid=os.getuid())
            + [judge_limit_check(flood)])


# A program that floods the tests with results (600 MB of strings through ``tuple(f())``): the judge must stop
# it as the program's failure (``memory``) while its own memory stays far below its limit.
JUDGE_PROBE_CODE = "def f():\n    return ('x' * 200_000 for _ in range(3000))\n"
JUDGE_PROBE_PROBLEM = {"public_tests": ["assert tuple(f()) == ()"], "private_tests": []}


def judge_limit_check(raw: dict[str, Any]) -> Check:
    judge = raw.get("judge") or {}
    limit, peak_kb = judge.get("memory_limit"), judge.get("peak_rss_kb")
    ok = raw.get("status") == "memory" and bool(limit) and peak_kb is not None and peak_kb * 1024 < limit
    if ok:
        detail = (f"a program flooding the tests was stopped as 'memory' after {judge.get('received_bytes', 0) >> 20}"
                  f" MiB; judge peak {peak_kb >> 10} MiB of its {limit >> 20} MiB limit")
    else:
        detail = (f"a program flooding the tests got {raw.get('status')!r} (judge limit {limit}, peak "
                  f"{peak_kb} kB): the judge is not protected")
    return Check("judge memory limit", ok, detail)
