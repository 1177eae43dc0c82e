"""``mucode doctor``: what works on this host and what does not.

Every check *tries* the thing (connects, imports, forks, asks the workers) instead of assuming it, and returns
``Check`` rows: ``name``, ``ok``, a one-line ``detail`` that names the problem and the fix, and ``required``
(whether the configuration needs it: a failed required check makes ``mucode doctor`` exit non-zero, a failed
optional one is only reported).

What is required depends on what the host is for:
- always: the database (reachable and migrated to the code's head revision);
- a broker configured: the broker, and, for a cluster-wide check (no ``queues`` given), at least one live
  worker on every queue;
- embedded mode (no broker; everything runs in this process) or an ``execute`` host: the sandbox protections,
  and for embedded mode a sampling backend;
- a GPU host (``queues`` names ``sample``, ``score`` or ``train``, or ``gpu=True``): torch with CUDA, vLLM for
  sampling and scoring, transformers.

This module is part of ``app``: it never imports ``workers``. The CLI passes in the queue names and the Celery
app it uses to talk to the workers. Heavy imports (torch, vllm, transformers) happen inside the checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.errors import first_line

# Liveness beacons: every `mucode worker` writes one key per worker node to a Redis broker, refreshed by a
# thread, so that a solo-pool worker busy with a long GPU job (which answers no control command until the job
# ends) still counts as alive. Refreshed every ``Settings.heartbeat_s``; a key 3 heartbeats old expires.
BEACON_PREFIX = "mucode:worker:"

GPU_QUEUES = frozenset({"sample", "score", "train"})


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "FAIL" if self.required else "warn"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def exit_code(checks: Iterable[Check]) -> int:
    """1 when a check the configuration needs failed, else 0."""
    return 1 if any(c.required and not c.ok for c in checks) else 0


def _first_line(exc: BaseException) -> str:
    return first_line(str(exc) or type(exc).__name__, 10_000)


# -- database ------------------------------------------------------------------------------------------------
def check_database(url: str, *, timeout: float = 5.0) -> list[Check]:
    """Two rows: ``database`` (reachable) and ``schema`` (at the code's head revision)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from app.db.engine import DatabaseUnavailable, make_engine, redact

    shown = redact(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        return [
            Check("database", False, f"MUCODE_DATABASE_URL is not a valid database URL: {url!r}"),
            Check("schema", False, "not checked: no database"),
        ]
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if not path.is_file():
            # Connecting would create an empty file; doctor only looks.
            return [
                Check("database", False, f"SQLite file {path.resolve()} does not exist: run `mucode db upgrade`"),
                Check("schema", False, "not checked: no database"),
            ]
    kwargs: dict[str, Any] = {}
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": max(1, int(timeout))}
    try:
        engine = make_engine(url, **kwargs)
    except DatabaseUnavailable as exc:
        return [Check("database", False, str(exc)), Check("schema", False, "not checked: database unreachable")]
    except Exception as exc:  # noqa: BLE001 - a driver missing, a bad option...
        return [
            Check("database", False, f"cannot connect to the database at {shown}: {_first_line(exc)}"),
            Check("schema", False, "not checked: database unreachable"),
        ]
    try:
        with engine.connect() as conn:
            if backend == "postgresql":
                version = conn.execute(text("SHOW server_version")).scalar()
                server = f"PostgreSQL {str(version).split()[0]}"
            elif backend == "sqlite":
                server = f"SQLite {conn.execute(text('select sqlite_version()')).scalar()}"
            else:
                server = backend
        rows = [Check("database", True, f"{shown} reachable ({server})")]
        from app.db.migrate import current_revision, head_revision

        current, head = current_revision(engine), head_revision()
        if current == head:
            rows.append(Check("schema", True, f"at the head revision {head}"))
        elif current is None:
            rows.append(Check("schema", False, f"not migrated (code head {head}): run `mucode db upgrade`"))
        else:
            rows.append(
                Check("schema", False, f"at revision {current}, code head is {head}: run `mucode db upgrade`")
            )
        return rows
    except Exception as exc:  # noqa: BLE001
        return [
            Check("database", False, f"{shown}: {_first_line(exc)}"),
            Check("schema", False, "not checked: database error"),
        ]
    finally:
        engine.dispose()


# -- broker --------------------------------------------------------------------------------------------------
def _redact_broker(url: str) -> str:
    try:
        from kombu.utils.url import maybe_sanitize_url

        return maybe_sanitize_url(url)
    except Exception:  # noqa: BLE001
        return url


def _redis_client(url: str, timeout: float):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def check_broker(url: str | None, *, timeout: float = 5.0) -> list[Check]:
    """``broker`` (reachable), and for Redis ``broker settings`` (no key eviction: it would drop queued jobs)."""
    if not url:
        return [Check("broker", True, "none configured: jobs run in-process (embedded mode)", required=False)]
    from kombu import Connection

    shown = _redact_broker(url)
    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
            transport = conn.transport_cls
    except Exception as exc:  # noqa: BLE001 - kombu raises OperationalError and transport-specific errors
        return [Check("broker", False, f"cannot reach the broker at {shown}: {_first_line(exc)}")]
    rows = [Check("broker", True, f"{shown} reachable ({transport})")]
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            client = _redis_client(url, timeout)
            info = client.info()
            policy = info.get("maxmemory_policy", "?")
            aof = info.get("aof_enabled")
            version = info.get("redis_version", "?")
            client.close()
            if policy not in ("noeviction", "?"):
                rows.append(
                    Check(
                        "broker settings",
                        False,
                        f"Redis {version} evicts keys (maxmemory-policy {policy}): queued jobs can be lost; "
                        "set maxmemory-policy noeviction",
                        required=False,
                    )
                )
            else:
                persist = "append-only file on" if aof else "no append-only file (queued jobs lost on restart)"
                rows.append(
                    Check("broker settings", True, f"Redis {version}, maxmemory-policy {policy}, {persist}",
                          required=False)
                )
        except Exception as exc:  # noqa: BLE001 - INFO may be disabled on a managed Redis
            rows.append(Check("broker settings", False, f"cannot read Redis INFO: {_first_line(exc)}",
                              required=False))
    return rows


# -- workers -------------------------------------------------------------------------------------------------
def read_beacons(url: str, *, timeout: float = 3.0) -> dict[str, dict[str, Any]]:
    """Live worker beacons on a Redis broker: node name -> {queues, pool, pid, host, beat}."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return {}
    client = _redis_client(url, timeout)
    try:
        out: dict[str, dict[str, Any]] = {}
        for key in client.scan_iter(match=BEACON_PREFIX + "*", count=200):
            raw = client.get(key)
            if raw is None:
                continue
            try:
                beacon = json.loads(raw)
            except ValueError:
                continue
            name = key.decode() if isinstance(key, bytes) else str(key)
            out[name[len(BEACON_PREFIX):]] = beacon
        return out
    finally:
        client.close()


def check_workers(
    celery_app: Any,
    queues: Sequence[str],
    *,
    broker_url: str | None,
    timeout: float = 3.0,
    required: bool = True,
) -> list[Check]:
    """One row per queue: the workers that consume it, from ``inspect().active_queues()``.

    A solo-pool worker in the middle of a long job answers no control command; its liveness beacon (on a
    Redis broker) still shows it, marked busy.
    """
    if not broker_url:
        return [Check("workers", True, "none needed: jobs run in-process (embedded mode)", required=False)]
    answered: dict[str, list[str]] = {q: [] for q in queues}
    error = None
    try:
        replies = celery_app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:  # noqa: BLE001
        replies, error = {}, _first_line(exc)
    for node, node_queues in replies.items():
        for q in node_queues or []:
            name = q.get("name") if isinstance(q, dict) else str(q)
            if name in answered:
                answered[name].append(node)
    busy: dict[str, list[str]] = {q: [] for q in queues}
    try:
        beacons = read_beacons(broker_url, timeout=timeout) if broker_url else {}
    except Exception:  # noqa: BLE001 - the broker row already says whether it is reachable
        beacons = {}
    from app.config import get_settings

    heartbeat = get_settings().heartbeat_s
    now = time.time()
    for node, beacon in beacons.items():
        if node in replies:
            continue
        age = now - float(beacon.get("beat", 0))
        for q in beacon.get("queues", []):
            if q in busy and age <= 3 * heartbeat:
                busy[q].append(f"{node} (busy, seen {age:.0f}s ago)")
    rows = []
    for q in queues:
        nodes = sorted(answered[q]) + sorted(busy[q])
        if nodes:
            rows.append(Check(f"workers[{q}]", True, ", ".join(nodes), required=required))
        else:
            why = f" ({error})" if error else ""
            rows.append(
                Check(
                    f"workers[{q}]",
                    False,
                    f"no worker consumes queue {q!r}{why}: start one with `mucode worker --queues {q}`",
                    required=required,
                )
            )
    return rows


# -- sandbox -------------------------------------------------------------------------------------------------
def check_sandbox(*, required: bool = True) -> list[Check]:
    """The sandbox's own probe, which really tries each protection (network, uid, limits...) on this host."""
    try:
        from app.sandbox import probe_protections
    except Exception as exc:  # noqa: BLE001 - missing package, or an import that fails on this host
        return [Check("sandbox", False, f"the sandbox cannot be loaded: {_first_line(exc)}", required=required)]
    try:
        results = list(probe_protections())
    except Exception as exc:  # noqa: BLE001
        return [Check("sandbox", False, f"the sandbox probe failed: {_first_line(exc)}", required=required)]
    if not results:
        return [Check("sandbox", False, "the sandbox probe returned nothing", required=required)]
    rows = []
    for r in results:
        name = str(getattr(r, "name", r))
        own_required = getattr(r, "required", True)
        rows.append(
            Check(
                name if name.startswith("sandbox") else f"sandbox {name}",
                bool(getattr(r, "ok", False)),
                str(getattr(r, "detail", "")),
                required=required and bool(own_required),
            )
        )
    return rows


# -- GPU and sampling backends -------------------------------------------------------------------------------
def _try_import(module: str, *, timeout: float = 180.0) -> tuple[bool, str]:
    """Import ``module`` in a child interpreter (a broken CUDA build can crash or hang the importer)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return False, "not installed"
    code = f"import {module} as m; print(getattr(m, '__version__', '?'))"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"import {module} hung for {timeout:.0f}s"
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return False, f"import {module} fails: {lines[-1] if lines else f'exit {proc.returncode}'}"
    return True, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "?"


_GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def check_gpu(*, required: bool = False) -> Check:
    """torch sees at least one CUDA device (torch imported here, lazily, when the host has a GPU device)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return Check("gpu", False, "torch is not installed (install the gpu or cpu extra)", required=required)
    if not any(os.path.exists(p) for p in _GPU_DEVICE_NODES):
        # No device node, no CUDA: say so without the seconds that importing torch takes.
        return Check("gpu", False, f"no GPU device on this host (no {', '.join(_GPU_DEVICE_NODES)}; torch "
                     f"{_dist_version('torch') or '?'})", required=required)
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return Check("gpu", False, f"import torch fails: {_first_line(exc)}", required=required)
    try:
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    except Exception as exc:  # noqa: BLE001
        return Check("gpu", False, f"torch {torch.__version__}: CUDA error: {_first_line(exc)}", required=required)
    if not available or count == 0:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return Check("gpu", False, f"torch {torch.__version__} ({build}) sees no CUDA device", required=required)
    names = []
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        names.append(f"{props.name} {props.total_memory / 2**30:.0f} GiB")
    return Check("gpu", True, f"torch {torch.__version__}, CUDA {torch.version.cuda}: " + "; ".join(names),
                 required=required)


def check_backend(module: str, label: str, *, required: bool = False, timeout: float = 180.0) -> Check:
    """A sampling backend: imported for real (in a child interpreter) where this host needs it, otherwise only
    looked up (an informational row should not cost the seconds an import of vLLM takes)."""
    if not required:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return Check(label, False, "not installed", required=False)
        return Check(label, True, f"{module} {_dist_version(module) or '?'} installed (not needed here)",
                     required=False)
    ok, detail = _try_import(module, timeout=timeout)
    return Check(label, ok, f"{module} {detail}" if ok else detail, required=required)


def check_data_dir(path: Path) -> Check:
    """The benchmark files against their checksums (``mucode data verify`` shows them one by one)."""
    from app.datasets import check_dataset_files
    from app.errors import MucodeError

    try:
        checks = check_dataset_files(["all"], path)
    except MucodeError as exc:
        return Check("data", False, str(exc), required=False)
    bad = [f"{c.relative} {c.status}" for c in checks if not c.ok]
    if bad:
        return Check("data", False, f"{path}: {', '.join(bad)} (mucode data verify)", required=False)
    return Check("data", True, f"{path}: {len(checks)} benchmark files match their sha256", required=False)


# -- all together --------------------------------------------------------------------------------------------
def run_checks(
    settings: Any,
    *,
    all_queues: Sequence[str],
    serving: Sequence[str] | None = None,
    celery_app: Any = None,
    gpu: bool | None = None,
    timeout: float = 3.0,
) -> list[Check]:
    """Every check for this configuration; ``serving`` = the queues this host runs workers for (if any)."""
    from concurrent.futures import ThreadPoolExecutor

    serving_set = set(serving or ())
    embedded = settings.broker_url is None
    gpu_host = bool(serving_set & GPU_QUEUES)
    gpu_needed = gpu if gpu is not None else gpu_host

    # The sandbox probe forks and may set signal handlers: it runs first, on the main thread, while this process
    # has no other thread. Then the slow, independent checks (importing torch; vllm and transformers in child
    # interpreters) run in the background while the database, broker and workers are checked here.
    sandbox_rows = check_sandbox(required=embedded or "execute" in serving_set)
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="doctor") as pool:
        gpu_row = pool.submit(check_gpu, required=gpu_needed)
        vllm_row = pool.submit(
            check_backend, "vllm", "backend vllm", required=gpu_needed and bool(serving_set & {"sample", "score"})
        )
        hf_row = pool.submit(check_backend, "transformers", "backend transformers", required=embedded or gpu_host)

        checks = check_database(settings.database_url, timeout=max(timeout, 2.0))
        checks += check_broker(settings.broker_url, timeout=max(timeout, 2.0))
        if not embedded:
            broker_ok = all(c.ok for c in checks if c.name == "broker")
            # A cluster-wide check needs every queue served; on a worker host live workers are informational.
            required = not serving_set
            if broker_ok and celery_app is not None:
                checks += check_workers(
                    celery_app, all_queues, broker_url=settings.broker_url, timeout=timeout, required=required
                )
            elif not broker_ok:
                checks.append(Check("workers", False, "not checked: broker unreachable", required=required))
        checks += sandbox_rows
        checks += [gpu_row.result(), vllm_row.result(), hf_row.result()]
    checks.append(check_data_dir(Path(settings.data_dir)))
    return checks
