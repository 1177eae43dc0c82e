"""CLI: ``mucode worker`` and ``mucode doctor``.

``mucode worker --queues Q[,Q...]`` wraps the Celery worker with the pool each kind of queue needs:

- ``sample``, ``score``, ``train`` (GPU): the **solo** pool. One process runs the jobs in its main thread, so the
  model stays loaded between jobs and CUDA is never initialised in a process that later forks (the prefork pool
  forks its children from the parent; a fork after CUDA init leaves an unusable CUDA context). Any
  multiprocessing the job itself does is switched to ``spawn``.
- ``execute`` (CPU, sandbox): the **threads** pool with concurrency 1. The sandbox parallelises across cores
  itself: it forks each candidate from its own long-lived executor process, started with an empty
  environment, never from the Celery process. A prefork child would add a second layer of processes that
  holds the database credentials and cannot be used by the sandbox anyway (billiard's children are daemonic);
  solo would block the worker's control channel for the whole batch. With threads the main thread keeps
  answering pings and ``inspect`` while a batch runs, and the one job thread only talks to the executor.
- ``control`` (round orchestration: short jobs that queue other jobs): threads, concurrency 2.

GPU and CPU queues are never mixed in one worker unless ``--force`` (then the worker uses the solo pool).
Celery enforces time limits only in the prefork pool, so this command installs its own: a watchdog raises
``SoftTimeLimitExceeded`` in the job's thread at the soft limit (the job fails and is acknowledged, as with
prefork) and ends the process at the hard limit (a job stuck in native code; the container restarts and the
job comes back through the broker or ``mucode round resume``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer

log = logging.getLogger("mucode.worker")

# Default pool and concurrency per queue (see the module docstring).
QUEUE_POOLS: dict[str, tuple[str, int]] = {
    "sample": ("solo", 1),
    "score": ("solo", 1),
    "train": ("solo", 1),
    "execute": ("threads", 1),
    "control": ("threads", 2),
}
POOLS = ("solo", "threads", "prefork")


@dataclass(frozen=True)
class WorkerPlan:
    queues: tuple[str, ...]
    pool: str
    concurrency: int
    hostname: str
    gpu: bool

    def argv(self, loglevel: str = "INFO") -> list[str]:
        return [
            "worker",
            f"--queues={','.join(self.queues)}",
            f"--pool={self.pool}",
            f"--concurrency={self.concurrency}",
            f"--hostname={self.hostname}",
            f"--loglevel={loglevel}",
            # Gossip and mingle are chatter between workers that mucode does not use (jobs are coordinated
            # through the store); with many sandbox workers they only slow start-up and load the broker.
            "--without-gossip",
            "--without-mingle",
        ]


def parse_queues(spec: str | Sequence[str]) -> tuple[str, ...]:
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        for q in item.replace(" ", ",").split(","):
            if q and q not in out:
                out.append(q)
    return tuple(out)


def plan_worker(
    queues: str | Sequence[str],
    *,
    pool: str | None = None,
    concurrency: int | None = None,
    name: str | None = None,
    force: bool = False,
    all_queues: Sequence[str] | None = None,
    gpu_queues: frozenset[str] | None = None,
) -> WorkerPlan:
    """Decide pool, concurrency and node name for a worker on ``queues``; refuse unsafe combinations."""
    from app.errors import ConfigError

    if all_queues is None or gpu_queues is None:
        from workers.celery_app import GPU_QUEUES, QUEUES

        all_queues = QUEUES if all_queues is None else all_queues
        gpu_queues = GPU_QUEUES if gpu_queues is None else gpu_queues
    qs = parse_queues(queues)
    if not qs:
        raise ConfigError(f"--queues names no queue; the queues are: {', '.join(all_queues)}")
    unknown = [q for q in qs if q not in all_queues]
    if unknown:
        raise ConfigError(f"unknown queue {unknown[0]!r}; the queues are: {', '.join(all_queues)}")
    gpu = [q for q in qs if q in gpu_queues]
    cpu = [q for q in qs if q not in gpu_queues]
    if gpu and cpu and not force:
        raise ConfigError(
            f"GPU queue(s) {', '.join(gpu)} and CPU queue(s) {', '.join(cpu)} in one worker: a GPU worker runs "
            "one job at a time in one process, which would stall the CPU queues behind long GPU jobs. Start one "
            "worker per kind, or pass --force (the whole worker then uses the solo pool)."
        )
    if gpu:
        default_pool, default_conc = "solo", 1
    else:
        default_pool = "threads"
        default_conc = max(QUEUE_POOLS.get(q, ("threads", 1))[1] for q in qs)
    chosen = pool or default_pool
    if chosen not in POOLS:
        raise ConfigError(f"unknown pool {chosen!r}; choose one of: {', '.join(POOLS)}")
    if gpu and chosen != "solo" and not force:
        raise ConfigError(
            f"the {chosen} pool on GPU queue(s) {', '.join(gpu)}: "
            + (
                "prefork forks worker processes after CUDA may be initialised"
                if chosen == "prefork"
                else "vLLM and CUDA expect to run in the main thread"
            )
            + "; GPU workers use the solo pool (pass --force to override)"
        )
    if chosen == "solo":
        if concurrency not in (None, 1):
            raise ConfigError("the solo pool runs one job at a time: --concurrency must be 1")
        conc = 1
    else:
        conc = concurrency or default_conc
        if conc < 1:
            raise ConfigError("--concurrency must be at least 1")
    node = f"{name or '+'.join(qs)}@%h" if not (name and "@" in name) else name
    return WorkerPlan(queues=qs, pool=chosen, concurrency=conc, hostname=node, gpu=bool(gpu))


# -- time limits for solo and thread pools -------------------------------------------------------------------
def _raise_in_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` asynchronously in the thread ``ident`` (at its next Python bytecode)."""
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    if n > 1:  # never expected: undo
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        return False
    return n == 1


@dataclass
class _Running:
    name: str
    ident: int
    started: float
    soft: float | None
    hard: float | None
    soft_fired: bool = False


class TimeLimitWatchdog:
    """Soft and hard time limits for jobs running in threads (Celery only enforces them in prefork).

    At the soft limit the job's thread gets ``SoftTimeLimitExceeded``; at the hard limit ``on_hard`` is called
    (by default: log and end the process, since a thread stuck in native code cannot be stopped otherwise).
    """

    def __init__(self, *, interval: float = 1.0, on_hard: Callable[[str, float], None] | None = None) -> None:
        self.interval = interval
        self.on_hard = on_hard or self._exit_process
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _exit_process(name: str, elapsed: float) -> None:
        log.critical("job %s passed its hard time limit (%.0fs): ending the worker process", name, elapsed)
        logging.shutdown()
        os._exit(70)

    def task_started(self, task_id: str, name: str, soft: float | None, hard: float | None,
                     ident: int | None = None) -> None:
        with self._lock:
            self._running[task_id] = _Running(name, ident or threading.get_ident(), time.monotonic(), soft, hard)

    def task_finished(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def check(self, now: float | None = None) -> None:
        from celery.exceptions import SoftTimeLimitExceeded

        now = time.monotonic() if now is None else now
        with self._lock:
            items = list(self._running.items())
        for task_id, r in items:
            elapsed = now - r.started
            if r.hard and elapsed >= r.hard:
                self.task_finished(task_id)
                self.on_hard(r.name, elapsed)
            elif r.soft and elapsed >= r.soft and not r.soft_fired:
                r.soft_fired = True
                log.error("job %s passed its soft time limit (%.0fs)", r.name, r.soft)
                _raise_in_thread(r.ident, SoftTimeLimitExceeded)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                log.exception("time-limit watchdog")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mucode-time-limits", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def task_limits(task: Any, conf: Any) -> tuple[float | None, float | None]:
    """(soft, hard) seconds for a task: the message's own limits, else the task's, else the app's defaults."""
    req_limits = getattr(task.request, "timelimit", None) or (None, None)
    hard = req_limits[0] or getattr(task, "time_limit", None) or conf.task_time_limit
    soft = req_limits[1] or getattr(task, "soft_time_limit", None) or conf.task_soft_time_limit
    return soft, hard


# -- liveness beacon -----------------------------------------------------------------------------------------
class Beacon:
    """Writes ``mucode:worker:<node>`` to a Redis broker every few seconds (read by ``mucode doctor``)."""

    def __init__(self, broker_url: str, node: str, queues: Sequence[str], pool: str) -> None:
        from app.config import get_settings
        from app.doctor import BEACON_PREFIX

        self.url, self.key = broker_url, BEACON_PREFIX + node
        self.interval = get_settings().heartbeat_s
        self.ttl = max(1, round(3 * self.interval))
        self.payload = {"queues": list(queues), "pool": pool, "pid": os.getpid(), "host": socket.gethostname()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None

    def _beat(self) -> None:
        import redis

        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=5)
        from app import liveness

        beacon = {**self.payload, "beat": time.time(), "jobs": liveness.snapshot()}
        self._client.set(self.key, json.dumps(beacon), ex=self.ttl)

    def _loop(self) -> None:
        while True:
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 - the broker may restart; keep trying
                log.warning("worker beacon: %s", exc)
                self._client = None
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        if self.url.startswith(("redis://", "rediss://", "unix://")) and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mucode-beacon", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._client is not None:
            try:
                self._client.delete(self.key)
            except Exception as exc:  # noqa: BLE001 - the key expires by itself anyway
                log.debug("worker beacon: cannot delete %s: %s", self.key, exc)


def _prepare_gpu_process() -> None:
    """No fork after CUDA: everything this process starts later spawns a fresh interpreter instead."""
    import multiprocessing

    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    multiprocessing.set_start_method("spawn", force=True)


def _install_hooks(celery_app: Any, plan: WorkerPlan, broker_url: str) -> None:
    from celery import signals

    watchdog = TimeLimitWatchdog()
    state: dict[str, Beacon] = {}

    def on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task is None or task_id is None:
            return
        soft, hard = task_limits(task, celery_app.conf)
        watchdog.task_started(task_id, task.name, soft, hard)

    def on_postrun(task_id: str | None = None, **_: Any) -> None:
        from app import liveness

        liveness.finished()  # whatever the task left registered (it died before recording its end)
        if task_id is not None:
            watchdog.task_finished(task_id)

    def on_ready(sender: Any = None, **_: Any) -> None:
        node = getattr(sender, "hostname", None) or plan.hostname.replace("%h", socket.gethostname())
        beacon = Beacon(broker_url, node, plan.queues, plan.pool)
        beacon.start()
        state["beacon"] = beacon
        if "control" in plan.queues:  # lost work is found and queued again (workers/healer.py)
            from workers.healer import Healer
            from workers.stores import worker_store

            healer = Healer(worker_store(), broker_url)
            healer.start()
            state["healer"] = healer
        watchdog.start()
        log.info("mucode worker %s ready: queues %s, pool %s x%d", node, ",".join(plan.queues), plan.pool,
                 plan.concurrency)

    def on_shutdown(**_: Any) -> None:
        watchdog.stop()
        if "healer" in state:
            state["healer"].stop()
        if "beacon" in state:
            state["beacon"].stop()

    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)


def _check_services(settings: Any, *, wait_s: float) -> None:
    """A worker takes jobs only once it can record them: the database (at the code's schema) and the broker
    answer, at the code's schema. They may still be starting or migrating (a compose stack): checked again for
    ``wait_s`` seconds, then a clear error."""
    from app.doctor import check_broker, check_database
    from app.errors import ConfigError

    deadline = time.monotonic() + wait_s
    while True:
        failed = [c for c in check_database(settings.database_url) + check_broker(settings.broker_url)
                  if c.required and not c.ok and not c.detail.startswith("not checked")]
        if not failed:
            return
        if time.monotonic() > deadline:
            raise ConfigError("the worker cannot start: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
        log.warning("waiting for %s", "; ".join(f"{c.name}: {c.detail}" for c in failed))
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())) or 0.1)


# -- commands ------------------------------------------------------------------------------------------------
def worker(
    queues: str = typer.Option(
        ..., "--queues", "-Q", help="Comma-separated queues: sample, score, train (GPU); execute, control (CPU)."
    ),
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-c", min=1, help="Jobs at a time (threads pool only; solo is always 1)."
    ),
    pool: str | None = typer.Option(None, "--pool", "-P", help="Override the pool (solo, threads, prefork)."),
    name: str | None = typer.Option(
        None, "--name", "-n", help="Node name (default: the queues, e.g. sample+score@HOST)."
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="Log level."),
    shutdown_timeout: float = typer.Option(
        60.0,
        "--shutdown-timeout",
        min=0.0,
        help="On SIGTERM, seconds a running job may take to finish before it is stopped and put back on its "
        "queue (keep the container's stop grace period longer).",
    ),
    force: bool = typer.Option(False, "--force", help="Allow GPU and CPU queues, or a non-solo GPU pool."),
    services_wait: float = typer.Option(
        60.0, "--services-wait", min=0,
        help="Seconds to wait at start for the database and the broker to answer (they may still be starting) "
        "before giving up with an error.",
    ),
) -> None:
    """Run a Celery worker on QUEUES with the right pool (GPU: solo; execute: threads x1; control: threads)."""
    from app.config import get_settings
    from app.errors import ConfigError

    plan = plan_worker(queues, pool=pool, concurrency=concurrency, name=name, force=force)
    settings = get_settings()
    if settings.broker_url is None:
        raise ConfigError(
            "no broker configured (MUCODE_BROKER_URL): jobs run in-process and need no worker; set "
            "MUCODE_BROKER_URL=redis://HOST:6379/0 to run workers"
        )
    from app.logs import setup_logging

    setup_logging(loglevel)
    _check_services(settings, wait_s=services_wait)
    if plan.gpu:
        _prepare_gpu_process()
    from workers.celery_app import celery_app

    celery_app.conf.worker_soft_shutdown_timeout = shutdown_timeout
    _install_hooks(celery_app, plan, settings.broker_url)
    celery_app.worker_main(plan.argv(loglevel))


def doctor(
    queues: str | None = typer.Option(
        None,
        "--queues",
        "-Q",
        help="The queues this host runs workers for: makes what those workers need required (sandbox for "
        "execute, GPU and vLLM for sample/score, GPU for train). Without it: a cluster-wide check.",
    ),
    gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="Require (or not) a CUDA GPU on this host."),
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds to wait for the broker and the workers."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Check database, broker, workers per queue, sandbox protections, GPU and backends; exit 1 on a failure."""
    from app.config import get_settings
    from app.doctor import exit_code, run_checks
    from workers.celery_app import QUEUES, celery_app

    settings = get_settings()
    serving = plan_worker(queues, force=True).queues if queues else None
    checks = run_checks(settings, all_queues=QUEUES, serving=serving, celery_app=celery_app, gpu=gpu,
                        timeout=timeout)
    code = exit_code(checks)
    if as_json:
        print(json.dumps({"ok": code == 0, "checks": [c.as_dict() for c in checks]}, indent=2))
        raise typer.Exit(code)
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)
    width = max(len(c.name) for c in checks)
    style = {"ok": "green", "FAIL": "bold red", "warn": "yellow"}
    for c in checks:
        console.print(f"[{style[c.status]}]{c.status:<4}[/] {escape(c.name.ljust(width))}  {escape(c.detail)}")
    failed = [c.name for c in checks if c.required and not c.ok]
    warned = [c.name for c in checks if not c.required and not c.ok]
    if failed:
        console.print(f"[bold red]{len(failed)} required check(s) failed:[/] {escape(', '.join(failed))}")
    else:
        extra = f" ({len(warned)} optional missing)" if warned else ""
        console.print(f"[green]everything this configuration needs works[/]{extra}")
    raise typer.Exit(code)


def register(root: typer.Typer) -> None:
    root.command("worker")(worker)
    root.command("doctor")(doctor)
