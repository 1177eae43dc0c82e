"""The multi-process path of ``trainers.verifier.train`` (what ``accelerate launch`` runs on several GPUs), exercised
on the CPU with ``torchrun`` and two gloo processes: every rank trains, the shards are saved once, and only the
main process registers and evaluates the verifier."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from trainers.verifier.config import VerifierTrainingConfig
from trainers.verifier.data import build_training_set
from trainers.verifier.model import MARKER

REPO = Path(__file__).resolve().parents[1]


def test_two_process_training_registers_once(tmp_path, tmp_path_factory):
    from app.store import Store
    from app.tiny_model import build_tiny_model
    from tests.test_verifier_train import seed_separable

    tiny = str(build_tiny_model(tmp_path_factory.getbasetemp() / "tiny"))
    url = f"sqlite:///{tmp_path / 'dist.db'}"
    store = Store(url)
    store.upgrade()
    w = seed_separable(store, n_problems=8)
    ts_id = build_training_set(store, [w["round_id"]], VerifierTrainingConfig(pairs_per_problem=8,
                                                                                holdout_fraction=0.25))
    out = tmp_path / "v"
    with socket.socket() as sock:  # a free port for the rendezvous (port 0 makes the ranks disagree)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        "-m", "trainers.verifier.train", "--training-set", str(ts_id), "--base-model", tiny,
        "--database-url", url, "--output-dir", str(out), "--name", "dist", "--max-steps", "4",
        "--per-device-batch-size", "4", "--effective-batch-size", "8", "--learning-rate", "3e-3",
        "--no-bf16", "--no-gradient-checkpointing", "--no-progress", "--max-length", "512",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUCODE_BROKER_URL": ""}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.count('"verifier_id"') == 1  # printed by the main process only
    [v] = store.list_verifiers()
    v = store.get_verifier(v["id"])
    train = v["metrics"]["train"]
    assert train["world_size"] == 2 and train["steps"] == 4 and train["pairs"] == 6 * 8
    assert (out / MARKER).is_file() and (out / "model.safetensors").is_file()
    assert not out.with_name("v.partial").exists() and not out.with_name("v.trainer").exists()
    hold = v["metrics"]["eval"]["holdout"]
    assert hold["rows"] == 2 * 8 and hold["unscored"] == 0
    store.dispose()
