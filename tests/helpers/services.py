"""Private PostgreSQL and Redis servers for fault-injection tests: started by the test on free ports, stopped and
started again at chosen points, removed at the end. The machine's shared servers are never touched.

    with private_postgres(tmp_path) as pg:      # pg.url: postgresql+psycopg://postgres@127.0.0.1:PORT/mucode
        pg.stop(); ...; pg.start()
    with private_redis(tmp_path) as rd:         # rd.url: redis://127.0.0.1:PORT/0 (no persistence)
        rd.stop(); ...; rd.start()

PostgreSQL refuses to run as root: when the tests run as root, its data directory belongs to the ``postgres``
user (or ``nobody``) and its commands run as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


def postgres_available() -> bool:
    return _pg_bin("initdb") is not None and _pg_bin("pg_ctl") is not None


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


@dataclass
class PrivatePostgres:
    data: Path
    port: int
    user: str | None  # run the server as this user (when we are root)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/mucode"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l", str(self.data / "log"),
                  "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: like a crash (connections cut, no checkpoint); ``fast``: a clean shutdown."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop", check=False)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.data / "log").read_text(errors="replace")
        return ""


@contextlib.contextmanager
def private_postgres(tmp: Path) -> Iterator[PrivatePostgres]:
    user = None
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
    data = Path(tmp) / f"pg-{os.getpid()}-{time.monotonic_ns()}"
    data.mkdir(parents=True)
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(data, pw.pw_uid, pw.pw_gid)
        for parent in [Path(tmp), *Path(tmp).parents]:  # the server must be able to reach its directory
            with contextlib.suppress(OSError):
                parent.chmod(parent.stat().st_mode | 0o011)
    pg = PrivatePostgres(data, free_port(), user)
    pg._run(_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    pg.start()
    try:
        pg._run(_pg_bin("psql") or "psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-c",
                "CREATE DATABASE mucode")
        yield pg
    finally:
        pg.stop("immediate")
        shutil.rmtree(data, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@dataclass
class PrivateRedis:
    port: int
    dir: Path
    persist: bool = False  # an append-only file (fsync always): a restart keeps the queued messages
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server: empty, or without ``persist`` after a restart too (every queued message lost)."""
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof,
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def private_redis(tmp: Path, *, persist: bool = False) -> Iterator[PrivateRedis]:
    d = Path(tmp) / f"redis-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    rd = PrivateRedis(free_port(), d, persist)
    rd.start()
    try:
        yield rd
    finally:
        rd.stop()
