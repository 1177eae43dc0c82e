"""Real Celery workers for integration tests: a private Redis database and worker processes.

    from tests.helpers.workers import celery_workers, redis_db

    with redis_db() as broker_url, celery_workers(database_url, broker_url) as workers:
        sampler = workers.start("sample")              # pool/concurrency from the queue (solo for GPU queues)
        executor = workers.start("execute")
        ...
        sampler.kill()                                 # kill -9 (the whole process group)
        workers.start("sample")                        # a fresh one
    # every worker is stopped (SIGTERM, then SIGKILL) and the Redis database flushed and released

``redis_db`` allocates one of Redis's numbered databases (1..15) with a lock key in database 0
(``SET mucode:test:redis-db:<n> <token> NX EX``), so parallel test sessions never share a broker; the
database is flushed before use and at the end, and the lock is released only by its owner.

Workers run ``mucode worker`` (the ops command, which picks the pool per queue) when it is registered, else
``python -m celery -A workers.celery_app:celery_app worker``; either way with ``MUCODE_DATABASE_URL`` and
``MUCODE_BROKER_URL`` set, their own session (process group), a log file, and a readiness check that waits
until the node answers a broadcast ``ping``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REDIS_BASE_URL = os.environ.get("MUCODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LOCK_PREFIX = "mucode:test:redis-db:"
# Default pool per queue when the worker is started through celery directly (mucode worker decides itself).
POOLS = {
    "sample": ("solo", 1),
    "score": ("solo", 1),
    "train": ("solo", 1),
    "execute": ("threads", 1),
    "control": ("threads", 2),
}


def _server_url(url: str) -> str:
    return url.rsplit("/", 1)[0] if url.rsplit("/", 1)[-1].isdigit() else url.rstrip("/")


@contextmanager
def redis_db(base_url: str = REDIS_BASE_URL, *, ttl_s: int = 3 * 3600) -> Iterator[str]:
    """A private, empty Redis database for this test (``redis://host:port/<n>``); flushed and released after."""
    import redis

    server = _server_url(base_url)
    admin = redis.Redis.from_url(f"{server}/0", socket_connect_timeout=5)
    try:
        admin.ping()
    except Exception as exc:
        raise RuntimeError(
            f"Redis is required for this test and is not reachable at {server}: {exc}"
        ) from exc
    try:
        ndb = int(admin.config_get("databases").get("databases", 16))
    except Exception:  # noqa: BLE001 -- CONFIG may be disabled; 16 is Redis's default
        ndb = 16
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    index = None
    for n in range(1, ndb):
        if admin.set(f"{LOCK_PREFIX}{n}", token, nx=True, ex=ttl_s):
            index = n
            break
    if index is None:
        raise RuntimeError(f"all Redis databases 1..{ndb - 1} are taken by other test sessions")
    url = f"{server}/{index}"
    db = redis.Redis.from_url(url)
    db.flushdb()
    try:
        yield url
    finally:
        try:
            db.flushdb()
        finally:
            # release only our own lock (compare-and-delete)
            admin.eval(
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                1,
                f"{LOCK_PREFIX}{index}",
                token,
            )
            db.close()
            admin.close()


def _mucode_worker_available() -> bool:
    try:
        from app.cli.main import root
    except Exception:  # noqa: BLE001
        return False
    names = {(c.name or getattr(c.callback, "__name__", "")) for c in root.registered_commands}
    return "worker" in names


@dataclass
class WorkerProcess:
    name: str  # the node name, e.g. sample-1a2b@host
    queues: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, wait: float = 10.0) -> None:
        """Send ``sig`` to the worker's process group (only the processes this helper started)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            if sig != signal.SIGKILL:
                self.kill(signal.SIGKILL, wait)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL after ``timeout``."""
        self.kill(signal.SIGTERM, wait=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class CeleryWorkers:
    database_url: str
    broker_url: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    use_cli: bool | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    _app: object | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MUCODE_DATABASE_URL=self.database_url,
            MUCODE_BROKER_URL=self.broker_url,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    @property
    def app(self):
        if self._app is None:
            from workers.celery_app import make_celery

            self._app = make_celery(self.broker_url)
        return self._app

    def start(
        self,
        queues: str,
        *,
        pool: str | None = None,
        concurrency: int | None = None,
        ready_timeout: float = 90.0,
        loglevel: str = "INFO",
        nice: int = 0,
    ) -> WorkerProcess:
        """Start a worker for ``queues`` and wait until it answers ping. ``nice`` lowers its CPU priority
        (e.g. an execute worker sharing a CPU-only host with a sampling worker)."""
        first = queues.split(",")[0]
        node = f"{queues.replace(',', '+')}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        use_cli = _mucode_worker_available() if self.use_cli is None else self.use_cli
        if use_cli:
            cmd = [
                sys.executable,
                "-m",
                "app.cli.main",
                "worker",
                "--queues",
                queues,
                "--name",
                node,
                "--loglevel",
                loglevel,
            ]
            if pool:
                cmd += ["--pool", pool]
            if concurrency:
                cmd += ["--concurrency", str(concurrency)]
        else:
            default_pool, default_conc = POOLS.get(first, ("solo", 1))
            cmd = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app:celery_app",
                "worker",
                "-Q",
                queues,
                "-P",
                pool or default_pool,
                "-c",
                str(concurrency or default_conc),
                "-n",
                node,
                "-l",
                loglevel,
                "--without-gossip",
                "--without-mingle",
            ]
        if nice:
            cmd = ["nice", "-n", str(int(nice)), *cmd]
        log_path = self.log_dir / f"{node.split('@')[0]}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 -- kept open for the child's lifetime
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=self.env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        w = WorkerProcess(name=node, queues=queues, proc=proc, log_path=log_path)
        self.workers.append(w)
        self.wait_ready(w, ready_timeout)
        return w

    def ping(self, w: WorkerProcess, timeout: float = 1.0) -> bool:
        replies = self.app.control.ping(destination=[w.name], timeout=timeout) or []
        return any(w.name in r for r in replies)

    def wait_ready(self, w: WorkerProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not w.alive():
                raise RuntimeError(f"worker {w.name} exited with {w.proc.returncode}:\n{w.log()[-4000:]}")
            if self.ping(w):
                return
            time.sleep(0.3)
        raise RuntimeError(f"worker {w.name} did not answer ping within {timeout:.0f} s:\n{w.log()[-4000:]}")

    def stop_all(self) -> None:
        for w in self.workers:
            if w.alive():
                try:
                    os.killpg(w.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill(signal.SIGKILL)
        # the process groups may hold grandchildren (sandbox executors): end them too
        for w in self.workers:
            try:
                os.killpg(w.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._app is not None:
            with contextlib.suppress(Exception):
                self._app.close()

    def logs(self) -> str:
        return "\n".join(f"===== {w.name} =====\n{w.log()[-6000:]}" for w in self.workers)


@contextmanager
def celery_workers(
    database_url: str,
    broker_url: str,
    *,
    log_dir: str | Path | None = None,
    extra_env: dict[str, str] | None = None,
    use_cli: bool | None = None,
) -> Iterator[CeleryWorkers]:
    """Start workers with ``.start(queues)``; all of them are stopped when the block ends."""
    tmp = None
    if log_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mucode-workers-")
        log_dir = tmp.name
    workers = CeleryWorkers(
        database_url=database_url,
        broker_url=broker_url,
        log_dir=Path(log_dir),
        extra_env=dict(extra_env or {}),
        use_cli=use_cli,
    )
    try:
        yield workers
    finally:
        workers.stop_all()
        if tmp is not None:
            tmp.cleanup()
