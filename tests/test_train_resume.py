"""Training survives a dead worker: a run killed with SIGKILL after its first complete checkpoint continues
from that step when started again, ends with the step count and weights of an uninterrupted run, and never
loads a checkpoint without its completeness marker. Tiny model, CPU, real subprocesses."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import seed
from trainers.checkpoints import MARKER, RUN_FILE, checkpoints_dir, complete_checkpoints

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 8
EVERY = 2

# The killed run is slowed down (a pause after every optimizer step) so that the test can see a checkpoint and
# kill the process before it ends; nothing else about the run changes.
SLOW = """
import os, runpy, sys, time
from transformers.trainer_callback import CallbackHandler
_step_end = CallbackHandler.on_step_end
def on_step_end(self, *a, **k):
    time.sleep(float(os.environ["RESUME_TEST_STEP_PAUSE"]))
    return _step_end(self, *a, **k)
CallbackHandler.on_step_end = on_step_end
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from app.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _env(store, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MUCODE_DATABASE_URL": str(store.engine.url),
            "MUCODE_ARTIFACTS_DIR": str(tmp_path / "art"), "MUCODE_BROKER_URL": "",
            "TOKENIZERS_PARALLELISM": "false", "RESUME_TEST_STEP_PAUSE": "0.5"}


def _kill_after_first_checkpoint(argv: list[str], ckpt: Path, env: dict[str, str]) -> list[int]:
    """Run ``python -m argv...`` slowed down, SIGKILL it once a checkpoint is complete; the complete steps."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW, *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not complete_checkpoints(ckpt):
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before its first checkpoint: "
                            f"{proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no complete checkpoint after 300 s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    return [int(p.name.split("-")[1]) for p in complete_checkpoints(ckpt)]


def _run(argv: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_here(argv: list[str], env: dict[str, str], monkeypatch) -> None:
    """The uninterrupted reference run, in this process (one interpreter start less)."""
    import importlib

    from app.config import get_settings

    for k in ("MUCODE_DATABASE_URL", "MUCODE_ARTIFACTS_DIR", "MUCODE_BROKER_URL"):
        monkeypatch.setenv(k, env[k])
    get_settings.cache_clear()
    try:
        assert importlib.import_module(argv[0]).main(argv[1:]) == 0
    finally:
        get_settings.cache_clear()


def _weights(folder: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def _same_weights(a: str | Path, b: str | Path) -> bool:
    import torch

    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def _half_written(ckpt: Path, step: int) -> Path:
    """What a process killed while writing checkpoint-``step`` leaves: a model file cut short, no marker."""
    last = complete_checkpoints(ckpt)[-1]
    bad = ckpt / f"checkpoint-{step}"
    shutil.copytree(last, bad)
    (bad / MARKER).unlink()
    model = bad / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    state = json.loads((bad / "trainer_state.json").read_text())
    (bad / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}))
    return bad


# -- generator SFT -------------------------------------------------------------------------------------------
def _sft_store(store):
    from trainers.relabel import build_training_set

    rnd, _ = seed.sft_round(store, "resume")
    ts = build_training_set(store, rnd, method="mucode")
    assert ts["stats"]["examples"] == 6  # 3 optimizer steps per epoch below: the run crosses epochs
    return ts


def _sft_argv(ts_id: int, tiny: Path, name: str, out: Path) -> list[str]:
    # 2 examples per step in micro-batches of 1: the skipped batches on resume include accumulation steps
    return ["trainers.sft.train", "--training-set", str(ts_id), "--base-model", str(tiny), "--name", name,
            "--output-dir", str(out), "--learning-rate", "1e-3", "--max-steps", str(MAX_STEPS),
            "--effective-batch-size", "2", "--per-device-train-batch-size", "1", "--gradient-checkpointing",
            "false", "--bf16", "false", "--checkpoint-steps", str(EVERY)]


def test_generator_killed_after_a_checkpoint_continues_from_it(sqlite_store, tiny, tmp_path, monkeypatch):
    store = sqlite_store
    ts = _sft_store(store)
    env = _env(store, tmp_path)
    _run_here(_sft_argv(ts["id"], tiny, "ref", tmp_path / "ref"), env, monkeypatch)
    ref = store.get_model_version("ref")
    assert ref.metrics["global_steps"] == MAX_STEPS and ref.metrics["resumed_from_step"] == 0
    assert not checkpoints_dir(tmp_path / "ref").exists()  # removed once the model is registered

    out = tmp_path / "gen"
    argv = _sft_argv(ts["id"], tiny, "gen", out)
    ckpt = checkpoints_dir(out)
    steps = _kill_after_first_checkpoint(argv, ckpt, env)
    assert steps and steps[-1] < MAX_STEPS and not out.exists()
    assert store.get_model_version("gen", required=False) is None
    assert len(list(ckpt.glob("checkpoint-*"))) <= 3  # the last two complete ones, and one being written

    mv = _run(argv, env)  # the same command again, as a redelivered job runs it
    met = mv["metrics"]
    assert met["resumed_from_step"] == steps[-1] > 0
    assert met["global_steps"] == ref.metrics["global_steps"] == MAX_STEPS
    assert len(met["train_losses"]) == MAX_STEPS  # steps 1..8 each logged once: none trained twice
    assert met["train_losses"] == ref.metrics["train_losses"]
    assert met["train_loss"] == pytest.approx(ref.metrics["train_loss"], rel=1e-6)
    assert _same_weights(mv["uri"], ref.uri)  # the same data order and RNG: bit-exact on the CPU
    assert not ckpt.exists()


# -- verifier (Bradley-Terry) --------------------------------------------------------------------------------
def _verifier_store(store) -> int:
    from trainers.verifier.config import VerifierTrainingConfig
    from trainers.verifier.data import build_training_set

    rng = random.Random(0)
    gen = seed.add_model(store, "gen")
    rid = seed.add_round(store, "resume-v", 0, generator_id=gen)
    for i in range(4):
        pid = seed.add_problem(store, f"mbpp/{601 + i}", split="train")
        for s, good in enumerate([True, False, True, False]):
            body = "return sorted(items)" if good else f"return {rng.randint(0, 9)}"
            seed.add_rollout(store, problem_id=pid, sample_index=s, round_id=rid, generator_id=gen, turns=[
                {"response": f"```python\ndef f(items):\n    {body}\n```", "public": good, "private": good}])
    return build_training_set(store, [rid], VerifierTrainingConfig(**_VCFG))


_VCFG = {"loss": "bt", "learning_rate": 1e-3, "per_device_batch_size": 2, "effective_batch_size": 4,
         "max_steps": MAX_STEPS, "pairs_per_problem": 4, "holdout_fraction": 0.0, "max_length": 256,
         "bf16": False, "gradient_checkpointing": False, "evaluate": False, "logging_steps": 1,
         "checkpoint_steps": EVERY}


def _verifier_argv(store, ts_id: int, tiny: Path, name: str, out: Path) -> list[str]:
    return ["trainers.verifier.train", "--training-set", str(ts_id), "--base-model", str(tiny),
            "--name", name, "--output-dir", str(out), "--database-url", str(store.engine.url),
            "--config-json", json.dumps(_VCFG), "--no-progress"]


def test_verifier_resumes_and_ignores_a_checkpoint_without_its_marker(sqlite_store, tiny, tmp_path,
                                                                      monkeypatch):
    store = sqlite_store
    ts_id = _verifier_store(store)
    env = _env(store, tmp_path)
    _run_here(_verifier_argv(store, ts_id, tiny, "ref", tmp_path / "ref"), env, monkeypatch)
    ref = store.get_verifier("ref")
    assert ref["metrics"]["train"]["steps"] == MAX_STEPS

    out = tmp_path / "rm"
    argv = _verifier_argv(store, ts_id, tiny, "rm", out)
    ckpt = checkpoints_dir(out)
    steps = _kill_after_first_checkpoint(argv, ckpt, env)
    # The run died while writing the next checkpoint: files there, cut short, no marker. Loading it would fail
    # (or resume from a step that was never saved whole).
    bad = _half_written(ckpt, steps[-1] + EVERY)
    vid = _run(argv, env)["verifier_id"]
    v = store.get_verifier(vid)
    train = v["metrics"]["train"]
    assert train["resumed_from_step"] == steps[-1] > 0
    assert train["steps"] == MAX_STEPS
    assert [c["step"] for c in train["loss_curve"]] == list(range(1, MAX_STEPS + 1))
    assert train["loss_curve"] == ref["metrics"]["train"]["loss_curve"]
    assert _same_weights(v["uri"], ref["uri"])
    assert not bad.exists() and not ckpt.exists()


def test_checkpoints_of_another_run_or_incomplete_are_never_resumed(tmp_path):
    """The resume decision alone, on a real accelerate state: the marker decides, and a different run's
    checkpoints are deleted, not loaded."""
    from accelerate import Accelerator

    from app.errors import MucodeError
    from trainers.checkpoints import LOCK_FILE, prepare_resume, remove

    acc = Accelerator(cpu=True)
    folder = tmp_path / "m.checkpoints"
    run = {"learning_rate": 1e-3, "training_set_id": 1}
    assert prepare_resume(acc, folder, run) is None
    for step in (2, 4, 6):
        (folder / f"checkpoint-{step}").mkdir()
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    for step in (2, 4):
        (folder / f"checkpoint-{step}" / MARKER).write_text("{}")
    assert prepare_resume(acc, folder, run) == str(folder / "checkpoint-4")
    assert not (folder / "checkpoint-6").exists() and (folder / "checkpoint-2").exists()
    (folder / "checkpoint-4" / MARKER).unlink()  # killed between the files and the marker
    assert prepare_resume(acc, folder, run) == str(folder / "checkpoint-2")
    # the same output trained with another learning rate: its checkpoints are not this run's
    assert prepare_resume(acc, folder, {**run, "learning_rate": 2e-3}) is None
    assert not list(folder.glob("checkpoint-*"))
    assert json.loads((folder / RUN_FILE).read_text())["learning_rate"] == 2e-3
    # another process training into the same output: refused before anything of it is deleted
    other = tmp_path / "o.checkpoints"
    (other / "checkpoint-2").mkdir(parents=True)
    hold = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(other / LOCK_FILE)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MucodeError, match="another process is training into"):
            prepare_resume(acc, other, run)
        assert (other / "checkpoint-2").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert prepare_resume(acc, other, run) is None  # its holder is gone: the half-written checkpoint goes
    assert not (other / "checkpoint-2").exists()
    remove(other)
    assert not other.exists()
