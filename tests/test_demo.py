"""``mucode demo`` on a reduced slice, as a user runs it on a fresh machine: an empty working directory, no
database or broker configured (the embedded default: SQLite file in the working directory, jobs in-process),
with the tiny model that knows some answers instead of SmolLM2 (the real demo is run by hand; see the README)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_rounds import knowing_model as knowing_model

REPO = Path(__file__).resolve().parents[1]


def _demo(tmp_path: Path, model: str, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUCODE_") or k == "MUCODE_ALLOW_WEAK_ISOLATION"}
    env["MUCODE_BROKER_URL"] = "redis://127.0.0.1:1/0"  # configured but unused: the demo runs in-process
    env["PYTHONPATH"] = str(REPO)
    env["COLUMNS"] = "200"
    args = [sys.executable, "-m", "app.cli.main", "demo", "--model", model, "--train-problems", "3",
            "--test-problems", "3", "-M", "4", "-T", "2", "-N", "3", "-C", "1", "--max-new-tokens", "256",
            "--trainer-steps", "2", *extra]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_demo_runs_a_whole_round_and_prints_before_and_after(tmp_path, knowing_model):
    from app.store import Store

    t0 = time.monotonic()
    r = _demo(tmp_path, knowing_model)
    took = time.monotonic() - t0
    out = r.stdout
    assert r.returncode == 0, f"demo failed ({r.returncode}):\n{out}\n{r.stderr}"
    assert (tmp_path / "mucode.db").is_file(), "the embedded default is a SQLite file in the working directory"
    for text in ("mbpp:test (3 problems)", "G0", "G1", "greedy (T=0)", "BoN N=3 C=1 pt+lv", "turn 1", "turn 2",
                 "demo took", "mucode dashboard", "collect", "train_generator"):
        assert text in out, f"{text!r} missing from the demo output:\n{out}"
    peak = re.search(r"peak memory (\d+\.\d+) GiB", out)
    assert peak and 0.1 < float(peak.group(1)) < 3.0, out  # what the process really held, under the demo's goal
    store = Store(f"sqlite:///{tmp_path / 'mucode.db'}")
    exp = store.get_experiment("demo")
    (rnd,) = store.experiment_rounds(exp.id)
    assert rnd.status == "done" and rnd.generator_out_id and rnd.verifier_out_id
    assert exp.config["train_limit"] == 3 and exp.config["rollout"]["rollouts_per_problem"] == 4
    evs = store.round_evaluations(rnd.id)
    assert len(evs) == 4 and all(e.status == "done" and e.metrics["problems"] == 3 for e in evs)
    assert (tmp_path / "mucode-data" / "models").is_dir()  # trained models under the working directory
    print(f"demo (reduced slice, tiny model) took {took:.0f} s")

    # running it again shows the finished round instead of redoing it
    r2 = _demo(tmp_path, knowing_model)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "already done" in r2.stdout and "G1" in r2.stdout
    assert len(store.experiment_rounds(exp.id)) == 1


def test_the_demo_runs_embedded_without_touching_the_environment(monkeypatch):
    """The demo's settings drop the broker and are in force for a block only: os.environ stays as it was."""
    from app.config import Settings, get_settings, use_settings
    from app.demo import embedded_settings
    from workers.dispatch import in_process

    monkeypatch.setenv("MUCODE_BROKER_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    try:
        before = dict(os.environ)
        mine = embedded_settings(Settings(database_url="sqlite:///elsewhere.db"))
        assert mine.broker_url is None and mine.database_url == "sqlite:///elsewhere.db"
        assert embedded_settings().broker_url is None and get_settings().broker_url == "redis://127.0.0.1:1/0"
        assert not in_process()
        with use_settings(mine):
            assert get_settings() is mine and in_process()
        assert not in_process() and dict(os.environ) == before
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
