"""The full stack's compose file, `mucode worker` and `mucode doctor`.

Real Redis (a database number of its own, so other tests' workers never answer here), real SQLite and Postgres,
real Celery worker processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import run_mucode

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
REDIS_URL = os.environ.get("MUCODE_TEST_OPS_REDIS_URL", "redis://127.0.0.1:6379/9")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUCODE_")}
    env.update(extra)
    return env


def _mucode(*args: str, env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_mucode(list(args), {**env, "PYTHONPATH": str(ROOT)}, cwd=cwd, timeout=timeout, inherit=False)


# -- the compose file ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _mucode_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def _resolve_mucode(args: list[str]):
    """Walk the Typer app's command tree like the shell would, and parse the leaf's options (no invocation)."""
    import typer.main

    from app.cli.main import root

    cmd = typer.main.get_command(root)
    path = ["mucode"]
    rest = list(args)
    while hasattr(cmd, "list_commands"):  # a group (Typer vendors its own click: duck typing)
        assert rest and not rest[0].startswith("-"), f"`{' '.join(path)}` needs a sub-command"
        with cmd.context_class(cmd, info_name=path[-1]) as ctx:
            sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, f"`{' '.join(path)} {rest[0]}` is not a mucode command"
        path.append(rest.pop(0))
        cmd = sub
    ctx = cmd.make_context(" ".join(path), rest)  # raises click.UsageError on an unknown option or argument
    return path, ctx


def test_every_service_command_is_a_real_entry_point(compose):
    from workers.celery_app import QUEUES

    services = _mucode_services(compose)
    assert {"migrate", "load-data", "sampler", "sandbox", "trainer", "control", "dashboard"} <= set(services)
    served: set[str] = set()
    for name, svc in services.items():
        command = svc.get("command")
        assert isinstance(command, list) and command, f"{name}: command must be an exec-form list"
        if command[0] == "mucode":
            path, ctx = _resolve_mucode(command[1:])
            if path[1:] == ["worker"]:
                queues = ctx.params["queues"].split(",")
                assert queues and set(queues) <= set(QUEUES), f"{name}: --queues {queues} vs {QUEUES}"
                served.update(queues)
        elif command[0] == "celery":
            app_path = command[command.index("-A") + 1] if "-A" in command else None
            assert app_path, f"{name}: celery without -A"
            module, _, attr = app_path.partition(":")
            import importlib

            assert hasattr(importlib.import_module(module), attr or "app")
            for i, arg in enumerate(command):
                if arg in ("-Q", "--queues"):
                    assert set(command[i + 1].split(",")) <= set(QUEUES)
        else:
            pytest.fail(f"{name}: command {command[0]!r} is neither mucode nor celery")
    assert served == set(QUEUES), f"queues without a worker service: {set(QUEUES) - served}"


def test_compose_services_are_wired_as_the_design_says(compose):
    s = compose["services"]
    # Postgres: a volume and a health check that the others wait on.
    assert any(v.startswith("pgdata:") for v in s["postgres"]["volumes"])
    assert "healthcheck" in s["postgres"] and "healthcheck" in s["redis"]
    assert s["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("load-data", "sampler", "sandbox", "trainer", "control", "dashboard"):
        assert s[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    # GPU workers reserve a GPU; the CPU ones do not.
    for name in ("sampler", "trainer"):
        devices = s[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices and "gpu" in devices[0]["capabilities"], name
        assert any(v.startswith("models:") for v in s[name]["volumes"]), name
        assert "gpu.Dockerfile" in s[name]["build"]["dockerfile"]
    for name in ("sandbox", "control", "dashboard", "migrate", "load-data"):
        assert "deploy" not in s[name], name
        assert "cpu.Dockerfile" in s[name]["build"]["dockerfile"]
    # The sandbox: all capabilities dropped but the few the namespaces and uid switch need; nothing secret.
    sandbox = s["sandbox"]
    assert sandbox["cap_drop"] == ["ALL"]
    assert set(sandbox["cap_add"]) <= {"SYS_ADMIN", "SETUID", "SETGID", "KILL"}
    assert "no-new-privileges:true" in sandbox["security_opt"]
    assert "volumes" not in sandbox and "ports" not in sandbox
    assert not any("TOKEN" in k or "HF_" in k for k in sandbox["environment"]), sandbox["environment"]
    # Sandbox workers scale with `--scale`: nothing that pins one instance.
    assert "container_name" not in sandbox and "hostname" not in sandbox
    assert "8501" in s["dashboard"]["ports"][0]
    assert {"pgdata", "models"} <= set(compose["volumes"])


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file(tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose client on this machine")
    ok = subprocess.run(
        [*cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert ok.returncode == 0, ok.stderr
    # Without the passwords the file refuses to resolve, and says which one is missing.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = {k: v for k, v in _env().items() if k not in ("POSTGRES_PASSWORD", "REDIS_PASSWORD")}
    bad = subprocess.run(
        [*cli, "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert bad.returncode != 0 and "PASSWORD" in bad.stderr + bad.stdout


def test_env_example_holds_no_mucode_settings():
    keys = [ln.split("=", 1)[0] for ln in ENV_EXAMPLE.read_text().splitlines() if "=" in ln and not ln.startswith("#")]
    assert "POSTGRES_PASSWORD" in keys and "REDIS_PASSWORD" in keys
    assert not [k for k in keys if k.startswith("MUCODE_")]


# -- worker planning -----------------------------------------------------------------------------------------
def test_worker_pools_per_queue():
    from app.cli.ops import plan_worker

    p = plan_worker("sample,score")
    assert (p.pool, p.concurrency, p.gpu, p.hostname) == ("solo", 1, True, "sample+score@%h")
    p = plan_worker("train")
    assert (p.pool, p.concurrency, p.gpu) == ("solo", 1, True)
    p = plan_worker("execute")
    assert (p.pool, p.concurrency, p.gpu, p.hostname) == ("threads", 1, False, "execute@%h")
    p = plan_worker("control", name="ctl")
    assert (p.pool, p.concurrency, p.hostname) == ("threads", 2, "ctl@%h")
    assert plan_worker("execute", concurrency=3).concurrency == 3
    assert "--pool=threads" in plan_worker("execute").argv()


def test_worker_refuses_unsafe_combinations():
    from app.cli.ops import plan_worker
    from app.errors import ConfigError

    with pytest.raises(ConfigError, match="GPU queue"):
        plan_worker("sample,execute")
    forced = plan_worker("sample,execute", force=True)
    assert forced.pool == "solo" and forced.concurrency == 1
    with pytest.raises(ConfigError, match="unknown queue 'gpu'"):
        plan_worker("gpu")
    with pytest.raises(ConfigError, match="prefork"):
        plan_worker("train", pool="prefork")
    with pytest.raises(ConfigError, match="concurrency must be 1"):
        plan_worker("sample", concurrency=4)


def test_cli_worker_refusal_and_missing_broker(tmp_path):
    mixed = _mucode("worker", "--queues", "train,control", env=_env(MUCODE_BROKER_URL=REDIS_URL), cwd=tmp_path)
    assert mixed.returncode != 0 and "GPU queue(s) train and CPU queue(s) control" in mixed.stderr
    no_broker = _mucode("worker", "--queues", "execute", env=_env(), cwd=tmp_path)
    assert no_broker.returncode != 0 and "no broker configured" in no_broker.stderr


def test_ops_modules_import_nothing_heavy():
    code = (
        "import sys, app.cli.ops, app.doctor; "
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'celery', 'redis', 'sqlalchemy') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- time limits in solo and thread pools --------------------------------------------------------------------
def test_watchdog_soft_limit_interrupts_the_job_thread():
    from celery.exceptions import SoftTimeLimitExceeded

    from app.cli.ops import TimeLimitWatchdog

    hard_hits: list[str] = []
    dog = TimeLimitWatchdog(interval=0.05, on_hard=lambda name, elapsed: hard_hits.append(name))
    outcome: dict[str, object] = {}

    def job() -> None:
        dog.task_started("t1", "mucode.sample", soft=0.3, hard=None)
        started = time.monotonic()
        try:
            while time.monotonic() - started < 20:  # a Python-level loop, as a sampling or training step is
                sum(range(1000))
            outcome["result"] = "ran to the end"
        except SoftTimeLimitExceeded:
            outcome["result"] = "soft limit"
            outcome["after"] = time.monotonic() - started
        finally:
            dog.task_finished("t1")

    dog.start()
    t = threading.Thread(target=job)
    t.start()
    t.join(30)
    dog.stop()
    assert outcome["result"] == "soft limit" and 0.25 <= outcome["after"] < 5
    assert hard_hits == []


def test_watchdog_hard_limit_calls_the_handler():
    from app.cli.ops import TimeLimitWatchdog

    hits: list[tuple[str, float]] = []
    dog = TimeLimitWatchdog(on_hard=lambda name, elapsed: hits.append((name, elapsed)))
    dog.task_started("t2", "mucode.train_generator", soft=None, hard=10, ident=12345)
    t0 = time.monotonic()
    dog.check(now=t0 + 5)
    assert hits == []
    dog.check(now=t0 + 11)
    assert [h[0] for h in hits] == ["mucode.train_generator"]
    dog.check(now=t0 + 20)  # fired once, then forgotten
    assert len(hits) == 1


def test_task_time_limits_stay_below_the_visibility_timeout():
    from workers.celery_app import TASK_QUEUES, TASK_TIME_LIMITS, VISIBILITY_TIMEOUT_S, make_celery

    app = make_celery("memory://")
    assert set(TASK_TIME_LIMITS) == set(TASK_QUEUES)
    assert max(TASK_TIME_LIMITS.values()) < VISIBILITY_TIMEOUT_S
    assert app.conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1


# -- doctor --------------------------------------------------------------------------------------------------
def _doctor_json(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, dict[str, dict]]:
    out = _mucode("doctor", "--json", "--timeout", "1", *args, env=env, cwd=cwd)
    assert out.stdout.strip(), out.stderr
    data = json.loads(out.stdout)
    return out.returncode, {c["name"]: c for c in data["checks"]}


def test_doctor_healthy_local_setup(sqlite_store, tmp_path):
    url = sqlite_store.engine.url.render_as_string(hide_password=False)
    code, rows = _doctor_json(_env(MUCODE_DATABASE_URL=url, MUCODE_BROKER_URL=REDIS_URL), tmp_path)
    assert rows["database"]["ok"] and "reachable" in rows["database"]["detail"]
    assert rows["schema"]["ok"] and "head revision" in rows["schema"]["detail"]
    assert rows["broker"]["ok"] and "reachable" in rows["broker"]["detail"]
    # Every queue has a row; the GPU is informational on a host that serves no GPU queue.
    from workers.celery_app import QUEUES

    assert {f"workers[{q}]" for q in QUEUES} <= set(rows)
    assert rows["gpu"]["required"] is False
    # As an `execute` host: live workers elsewhere are not this host's business, the sandbox is.
    code, rows = _doctor_json(_env(MUCODE_DATABASE_URL=url, MUCODE_BROKER_URL=REDIS_URL), tmp_path,
                              "--queues", "execute")
    assert all(not r["required"] for n, r in rows.items() if n.startswith("workers["))
    sandbox_rows = [r for n, r in rows.items() if n.startswith("sandbox")]
    assert sandbox_rows and any(r["required"] for r in sandbox_rows)
    required_failed = [n for n, r in rows.items() if r["required"] and not r["ok"]]
    assert code == (1 if required_failed else 0)


def test_doctor_text_output_one_line_per_check(sqlite_store, tmp_path):
    url = sqlite_store.engine.url.render_as_string(hide_password=False)
    out = _mucode("doctor", "--timeout", "1", env=_env(MUCODE_DATABASE_URL=url), cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ok   database") and lines[1].startswith("ok   schema")
    assert any(ln.startswith("ok   broker") and "in-process" in ln for ln in lines)


def test_doctor_database_down_exits_nonzero(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(MUCODE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/mucode", MUCODE_BROKER_URL=REDIS_URL)
    out = _mucode("doctor", "--timeout", "1", env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("FAIL database"))
    assert "cannot connect to the database" in line and str(port) in line
    assert "required check(s) failed" in out.stdout


def test_doctor_unmigrated_database_exits_nonzero(tmp_path):
    from sqlalchemy import create_engine, text

    db = tmp_path / "empty.db"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("create table unrelated (x integer)"))
    engine.dispose()
    out = _mucode("doctor", "--timeout", "1", env=_env(MUCODE_DATABASE_URL=f"sqlite:///{db}"), cwd=tmp_path)
    assert out.returncode == 1
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("FAIL schema"))
    assert "not migrated" in line and "mucode db upgrade" in line
    # A missing SQLite file is reported, not created.
    missing = tmp_path / "nope.db"
    out = _mucode("doctor", "--timeout", "1", env=_env(MUCODE_DATABASE_URL=f"sqlite:///{missing}"), cwd=tmp_path)
    assert out.returncode == 1 and "does not exist" in out.stdout and not missing.exists()


@pytest.mark.postgres
def test_doctor_unmigrated_postgres(tmp_path):
    from app.db.engine import scratch_database
    from app.doctor import check_database, exit_code
    from tests.conftest import PG_ADMIN_URL

    with scratch_database(PG_ADMIN_URL, "mucode_test") as url:
        rows = {c.name: c for c in check_database(url)}
        assert rows["database"].ok and "PostgreSQL" in rows["database"].detail
        assert not rows["schema"].ok and "mucode db upgrade" in rows["schema"].detail
        assert exit_code(rows.values()) == 1
        out = _mucode("doctor", "--timeout", "1", env=_env(MUCODE_DATABASE_URL=url), cwd=tmp_path)
        assert out.returncode == 1 and "FAIL schema" in out.stdout


def test_doctor_broker_down(tmp_path):
    from app.doctor import check_broker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = check_broker(f"redis://127.0.0.1:{port}/0", timeout=1)
    assert not rows[0].ok and rows[0].required and "cannot reach the broker" in rows[0].detail


def test_doctor_sandbox_rows_never_crash():
    from app.doctor import check_sandbox

    rows = check_sandbox(required=True)
    assert rows and all(r.name.startswith("sandbox") for r in rows)
    assert all(isinstance(r.detail, str) and r.detail for r in rows)


# -- a real worker -------------------------------------------------------------------------------------------
def test_a_worker_that_cannot_record_its_jobs_does_not_start(tmp_path):
    """A worker takes jobs only once the database (at the code's schema) and the broker answer: a wrong database
    URL, an unmigrated database or an unreachable broker is an error naming it, after the wait, and no job is
    taken meanwhile (no queue is consumed)."""
    db = tmp_path / "w.db"
    cases = [
        ({"MUCODE_BROKER_URL": REDIS_URL, "MUCODE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"},
         "database: cannot connect"),
        ({"MUCODE_BROKER_URL": REDIS_URL, "MUCODE_DATABASE_URL": f"sqlite:///{db}"}, "does not exist"),
        ({"MUCODE_BROKER_URL": "redis://127.0.0.1:1/0", "MUCODE_DATABASE_URL": f"sqlite:///{db}"},
         "broker: cannot reach the broker"),
    ]
    for i, (extra, expected) in enumerate(cases):
        env = _env(**extra)
        if i == 2:
            assert _mucode("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
        t0 = time.monotonic()
        out = _mucode("worker", "--queues", "execute", "--services-wait", "3", env=env, cwd=tmp_path, timeout=120)
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert "error: the worker cannot start" in out.stderr and expected in out.stderr, out.stderr
        assert "ready" not in out.stdout + out.stderr
        assert time.monotonic() - t0 >= 3  # it waited for the service to come up before giving up


def test_worker_answers_ping_and_stops_cleanly(tmp_path):
    import redis

    from app.doctor import BEACON_PREFIX, check_workers, read_beacons
    from workers.celery_app import QUEUES, make_celery

    redis.Redis.from_url(REDIS_URL).ping()
    name = f"test-{uuid.uuid4().hex[:8]}"
    node = f"{name}@{socket.gethostname()}"
    env = _env(MUCODE_BROKER_URL=REDIS_URL, MUCODE_DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}")
    assert _mucode("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - the worker writes to it until it stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "worker", "--queues", "execute", "--name", name,
         "--loglevel", "INFO"],
        env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    app = make_celery(REDIS_URL)
    try:
        replies: list = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not replies:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            replies = app.control.ping(destination=[node], timeout=1.0)
        assert replies and node in replies[0] and replies[0][node] == {"ok": "pong"}
        # It consumes exactly the execute queue, with a thread pool of one.
        queues = app.control.inspect(destination=[node], timeout=2).active_queues()
        assert [q["name"] for q in queues[node]] == ["execute"]
        stats = app.control.inspect(destination=[node], timeout=2).stats()
        assert stats[node]["pool"]["max-concurrency"] == 1
        assert "thread" in stats[node]["pool"]["implementation"].lower()
        # Doctor sees it on its queue, and its beacon.
        rows = {c.name: c for c in check_workers(app, QUEUES, broker_url=REDIS_URL, timeout=2)}
        assert rows["workers[execute]"].ok and node in rows["workers[execute]"].detail
        deadline = time.monotonic() + 15
        while node not in read_beacons(REDIS_URL) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert read_beacons(REDIS_URL)[node]["queues"] == ["execute"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("the worker did not stop within 60 s of SIGTERM")
        log.close()
    text = (tmp_path / "worker.log").read_text()
    assert rc == 0, text
    assert "Warm shutdown" in text or "shutdown" in text.lower()
    assert redis.Redis.from_url(REDIS_URL).get(BEACON_PREFIX + node) is None
    assert app.control.ping(destination=[node], timeout=1.0) == []


_LIMITS_WORKER = '''
import sys, time
import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from app.cli.ops import _install_hooks, plan_worker

url, node = sys.argv[1], sys.argv[2]
r = redis.Redis.from_url(url)
app = Celery("limits-test", broker=url)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_acks_on_failure_or_timeout=True,
                worker_hijack_root_logger=False, task_default_queue="limits-" + node)


@app.task(name="limits.spin", soft_time_limit=0.5, time_limit=30)
def spin(key):
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 20:
            sum(range(1000))
        r.set(key, "ran to the end")
    except SoftTimeLimitExceeded:
        r.set(key, "soft %.1f" % (time.monotonic() - t0))


@app.task(name="limits.stuck", soft_time_limit=0.5, time_limit=2)
def stuck(key):
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:  # swallows the soft limit, as a job stuck in native code would
        try:
            sum(range(1000))
        except SoftTimeLimitExceeded:
            r.set(key, "soft ignored")


plan = plan_worker("train", name=node.split("@")[0])
_install_hooks(app, plan, url)
app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--queues=limits-" + node, "--hostname=" + node,
                 "--loglevel=INFO", "--without-gossip", "--without-mingle"])
'''


def test_solo_worker_enforces_soft_and_hard_time_limits(tmp_path):
    """Celery ignores time limits in the solo pool; `mucode worker`'s hooks enforce them in a real worker."""
    import redis
    from celery import Celery

    r = redis.Redis.from_url(REDIS_URL)
    node = f"limits-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    script = tmp_path / "limits_worker.py"
    script.write_text(_LIMITS_WORKER)
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - the worker writes to it until it stops
    proc = subprocess.Popen([sys.executable, str(script), REDIS_URL, node], env={**_env(), "PYTHONPATH": str(ROOT)},
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    client = Celery("limits-client", broker=REDIS_URL)
    soft_key, stuck_key = f"{node}:soft", f"{node}:stuck"
    try:
        deadline = time.monotonic() + 90
        while not client.control.ping(destination=[node], timeout=1.0):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
        client.send_task("limits.spin", args=[soft_key], queue="limits-" + node)
        deadline = time.monotonic() + 30
        while r.get(soft_key) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        outcome = (r.get(soft_key) or b"").decode()
        assert outcome.startswith("soft"), (outcome, (tmp_path / "worker.log").read_text())
        assert 0.4 <= float(outcome.split()[1]) < 5
        # The worker survives a soft limit and takes the next job; past the hard limit it ends itself.
        client.send_task("limits.stuck", args=[stuck_key], queue="limits-" + node)
        rc = proc.wait(timeout=60)
        assert rc == 70, (tmp_path / "worker.log").read_text()
        assert r.get(stuck_key) == b"soft ignored"
        assert "hard time limit" in (tmp_path / "worker.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        r.delete(soft_key, stuck_key, f"limits-{node}", *r.keys(f"*limits-{node}*"))
        # The stuck job's message was never acknowledged (the process ended): drop it from the broker's
        # unacked table instead of letting it come back after the visibility timeout.
        for tag, raw in r.hgetall("unacked").items():
            if f"limits-{node}".encode() in raw:
                r.hdel("unacked", tag)
                r.zrem("unacked_index", tag)
