"""Experiment tracking: both trainers report their loss curve to TensorBoard (the experiment's tracker over the
environment's), a round's results land in the same experiment's folder one point per round, a missing tracker
package is named before any training, and stored configs without a tracker still load."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.config import Settings, get_settings
from app.db import models as m
from app.errors import MucodeError
from tests.helpers import seed


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean tracking environment: tracking off, artifacts under tmp_path."""
    for k in ("MUCODE_TRACKING", "MUCODE_TRACKING_URI", "TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MUCODE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from app.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _set_experiment_config(store, round_id: int, config: dict) -> str:
    with store.session() as s:
        exp_id = s.get(m.Round, round_id).experiment_id
        s.execute(update(m.Experiment).where(m.Experiment.id == exp_id).values(config=config))
        return s.get(m.Experiment, exp_id).name


def _sft_set(store):
    g = seed.add_model(store, "gen-base")
    rnd = seed.add_round(store, "trk", 0, generator_id=g)
    for i in range(2):
        p = seed.add_problem(store, f"mbpp/{900 + i}", prompt=f"Write f{i} that returns x + {i}.")
        seed.add_rollout(store, problem_id=p, sample_index=0, round_id=rnd, generator_id=g, turns=[
            {"response": f"```python\ndef f{i}(x):\n    return x + {i}\n```", "public": True, "private": True},
        ])
    return rnd


def test_sft_logs_its_loss_to_the_experiments_tensorboard(sqlite_store, tiny, tmp_path, env):
    """MUCODE_TRACKING says none; the experiment's own tracking wins, and TRL's TensorBoard integration writes
    the loss of every step into <uri>/<experiment>/<model name>."""
    from trainers.relabel import build_training_set
    from trainers.sft.config import GeneratorTrainConfig
    from trainers.sft.trainer import train_generator

    env.setenv("MUCODE_TRACKING", "none")
    get_settings.cache_clear()
    store = sqlite_store
    rnd = _sft_set(store)
    tb = tmp_path / "tb"
    exp = _set_experiment_config(store, rnd, {"tracking": {"backend": "tensorboard", "uri": str(tb)}})
    ts = build_training_set(store, rnd, method="multi_rft")
    cfg = GeneratorTrainConfig(
        training_set=str(ts["id"]), base_model=str(tiny), learning_rate=3e-3, max_steps=3, logging_steps=1,
        effective_batch_size=2, per_device_train_batch_size=2, gradient_checkpointing=False, bf16="false",
    )
    mv = train_generator(cfg, store=store)
    run_dirs = [p for p in (tb / exp).iterdir() if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    loss = _scalars(run_dirs[0])["train/loss"]
    assert [s for s, _ in loss] == [1, 2, 3]
    assert [v for _, v in loss] == pytest.approx(mv["metrics"]["train_losses"], rel=1e-5)
    assert mv["config"]["tracking"] == "tensorboard" and mv["config"]["tracking_uri"] == str(tb)
    import os

    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # a worker's next job starts clean


def test_verifier_logs_its_loss_to_the_environments_tensorboard(sqlite_store, tiny, tmp_path, env):
    """MUCODE_TRACKING=tensorboard without a URI: under <artifacts_dir>/tracking/tensorboard/<experiment>/."""
    from tests.test_verifier_train import seed_separable
    from trainers.verifier.config import VerifierTrainingConfig
    from trainers.verifier.data import build_training_set
    from trainers.verifier.train import train_verifier

    env.setenv("MUCODE_TRACKING", "tensorboard")
    get_settings.cache_clear()
    store = sqlite_store
    w = seed_separable(store, n_problems=4)
    cfg = VerifierTrainingConfig(learning_rate=3e-3, per_device_batch_size=8, effective_batch_size=8, max_steps=3,
                                 logging_steps=1, pairs_per_problem=4, max_length=512, bf16=False,
                                 gradient_checkpointing=False, evaluate=False)
    ts_id = build_training_set(store, [w["round_id"]], cfg)
    vid = train_verifier(store, training_set_id=ts_id, base_model=str(tiny), config=cfg, name="trk-rm",
                         round_id=w["round_id"], output_dir=tmp_path / "rm", progress=False)
    v = store.get_verifier(vid)
    run_dir = (tmp_path / "artifacts").resolve() / "tracking" / "tensorboard" / "sep" / "trk-rm"
    loss = _scalars(run_dir)["train/loss"]
    assert [s for s, _ in loss] == [1, 2, 3]
    assert [x for _, x in loss] == pytest.approx([c["loss"] for c in v["metrics"]["train"]["loss_curve"]],
                                                  rel=1e-5)
    assert v["config"]["tracking"] == "tensorboard" and v["config"]["run_name"] == "trk-rm"


def _finished_round(store, tracking: dict | None, index: int = 1) -> int:
    """An experiment's round as it stands when it finishes: step records, evaluations, the verifier and the
    generator it trained."""
    from app.evaluation import compute_metrics

    exp_id = store.get_experiment("story").id if _exists(store, "story") else store.create_experiment(
        "story", "mucode", "tiny", {"base_model": "tiny", **({"tracking": tracking} if tracking else {})})
    rid = store.create_round(exp_id, index)
    gen_in = seed.add_model(store, f"story-r{index}-in")
    gen_out = seed.add_model(store, f"story-r{index}-out")
    with store.session() as s:
        s.execute(update(m.ModelVersion).where(m.ModelVersion.id == gen_out).values(
            metrics={"train_loss": 0.75, "global_steps": 40, "train_seconds": 12.5, "train_losses": [1.0, 0.5]}))
    vid = store.add_verifier_version(
        name=f"story-r{index}-verifier-bt", base_model="tiny", uri="/nowhere", config={}, round_id=rid,
        metrics={"train": {"first_loss": 0.69, "final_loss": 0.2, "steps": 30, "seconds": 8.0},
                 "eval": {"holdout": None, "mbpp_test": {"roc_auc": 0.81, "pair_accuracy": 0.77, "pairs": 90,
                                                         "bon_accuracy": 0.6, "bon_groups": 20}}})
    # 4 greedy chains over 2 problems: one solved at turn 1, one at turn 3, two never
    picks = []
    for pid, chain, solved_at in ((1, 0, 1), (2, 0, 3), (3, 0, None), (4, 0, None)):
        for t in range(1, 4 if solved_at is None else solved_at + 1):
            ok = solved_at == t
            picks.append({"problem_id": pid, "chain_index": chain, "turn_index": t, "public_passed": ok,
                          "private_passed": ok})
    metrics = compute_metrics(picks, 3, metric="last_turn")
    with store.session() as s:
        for label, gid in ((f"G{index}", gen_in), (f"G{index + 1}", gen_out)):
            s.add(m.Evaluation(name=f"story/r{index}/{label}/mbpp-test/greedy", experiment_id=exp_id, round_id=rid,
                               generator_id=gid, dataset="mbpp", split="test", mode="greedy", selector="first",
                               max_turns=3, status="done", metrics=metrics))
    start = datetime(2025, 1, 1, tzinfo=UTC)
    store.set_round(rid, status="done", started_at=start, finished_at=start + timedelta(seconds=600),
                    verifier_out_id=vid, generator_out_id=gen_out)
    with store.session() as s:
        s.execute(update(m.Round).where(m.Round.id == rid).values(steps={
            "collect": {"state": "done", "attempt": 1, "seconds": 120.0, "result": {}},
            "train_verifier": {"state": "done", "attempt": 1, "seconds": 60.5, "result": {}},
            "relabel": {"state": "done", "attempt": 1, "seconds": 3.25,
                        "result": {"examples": 57, "problems": 30, "trajectories": 41}},
        }))
    return rid


def _exists(store, name: str) -> bool:
    with store.session() as s:
        return s.query(m.Experiment).filter_by(name=name).one_or_none() is not None


def test_log_round_writes_one_point_per_round_into_the_experiments_folder(sqlite_store, tmp_path, env):
    from app.tracking import log_round, round_facts

    store = sqlite_store
    tb = tmp_path / "tb"
    settings = Settings(tracking="tensorboard", tracking_uri=str(tb), artifacts_dir=tmp_path / "artifacts")
    for index in (0, 1):
        facts = round_facts(store, _finished_round(store, None, index))
        assert facts["experiment"] == "story" and facts["index"] == index and facts["seconds"] == 600.0
        out = log_round(facts, settings)
        assert out["backend"] == "tensorboard" and Path(out["where"]) == tb / "story" / "rounds"
    got = _scalars(tb / "story" / "rounds")
    # accuracy per turn, under a name both rounds share (G_in: the round's generator, G_out: the one it trained)
    assert got["accuracy/G_out/mbpp-test/greedy/turn_1"] == [(0, 0.25), (1, 0.25)]
    assert got["accuracy/G_in/mbpp-test/greedy/turn_3"] == [(0, 0.5), (1, 0.5)]
    assert got["accuracy/G_in/mbpp-test/greedy/final"][-1] == (1, 0.5)
    assert got["verifier/mbpp_test/roc_auc"][-1] == (1, pytest.approx(0.81))
    assert got["verifier/mbpp_test/pair_accuracy"][-1] == (1, pytest.approx(0.77))
    assert got["verifier/train/final_loss"][-1] == (1, pytest.approx(0.2))
    assert got["generator/train/train_loss"][-1] == (1, 0.75)
    assert got["relabel/examples"] == [(0, 57.0), (1, 57.0)]
    assert got["seconds/train_verifier"][-1] == (1, 60.5)
    assert got["seconds/round"][-1] == (1, 600.0)
    assert not any(t.startswith("verifier/holdout") for t in got)  # no held-out set: nothing invented


def test_experiment_tracking_overrides_the_environment_for_rounds(sqlite_store, tmp_path, env):
    from app.tracking import log_round, round_facts

    store = sqlite_store
    facts = round_facts(store, _finished_round(store, {"backend": "none"}))
    settings = Settings(tracking="tensorboard", tracking_uri=str(tmp_path / "tb"))
    assert log_round(facts, settings) is None and not (tmp_path / "tb").exists()
    facts["experiment_config"]["tracking"] = {"backend": "tensorboard", "uri": str(tmp_path / "own")}
    assert log_round(facts, Settings(tracking="none"))["where"] == str(tmp_path / "own" / "story" / "rounds")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_missing_tracker_package_is_named_before_training(sqlite_store, tiny, env):
    from trainers.relabel import build_training_set
    from trainers.sft.config import GeneratorTrainConfig
    from trainers.sft.trainer import train_generator

    store = sqlite_store
    rnd = _sft_set(store)
    ts = build_training_set(store, rnd, method="multi_rft")
    cfg = GeneratorTrainConfig(training_set=str(ts["id"]), base_model=str(tiny), max_steps=1, tracking="wandb")
    with pytest.raises(MucodeError, match="needs the wandb package"):
        train_generator(cfg, store=store)


def test_settings_and_stored_configs(env):
    from app.protocol import ExperimentConfig
    from app.tracking import resolve

    env.setenv("MUCODE_TRACKING", "TensorBoard")
    env.setenv("MUCODE_TRACKING_URI", "/srv/tb")
    s = Settings()
    assert (s.tracking, s.tracking_uri) == ("tensorboard", "/srv/tb")
    env.setenv("MUCODE_TRACKING", "comet")
    with pytest.raises(ValueError, match="tracking"):
        Settings()
    # a config stored before tracking existed loads, and a fresh dump of it is still equal (`experiment create`)
    old = ExperimentConfig(base_model="tiny").model_dump(mode="json")
    assert "tracking" not in old and ExperimentConfig.frozen(old).tracking is None
    own = ExperimentConfig(base_model="tiny", tracking={"backend": "mlflow", "uri": "http://mlflow:5000"})
    assert ExperimentConfig.frozen(own.model_dump(mode="json")).tracking.uri == "http://mlflow:5000"
    # the trainer's own setting > the experiment's > the environment; a site URI serves the chosen backend
    site = Settings(tracking="none", tracking_uri="/srv/tb", artifacts_dir="/data")
    assert resolve({"tracking": {"backend": "tensorboard"}}, settings=site).uri == "/srv/tb"
    mixed = Settings(tracking="mlflow", tracking_uri="http://mlflow:5000", artifacts_dir="/data")
    t = resolve({"tracking": {"backend": "tensorboard"}}, settings=mixed)
    assert (t.backend, t.uri) == ("tensorboard", "/data/tracking/tensorboard")
    assert resolve({}, settings=mixed, backend="none").backend == "none"


def test_mlflow_holds_the_training_run_and_the_rounds(sqlite_store, tiny, tmp_path, env):
    """Where MLflow is installed (the 'tracking' extra): one MLflow experiment per mucode experiment holds the
    generator's run (its loss per step) and the rounds' run."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from app.tracking import log_round, round_facts
    from trainers.relabel import build_training_set
    from trainers.sft.config import GeneratorTrainConfig
    from trainers.sft.trainer import train_generator

    store = sqlite_store
    uri = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"  # the default, under the artifacts folder
    env.setenv("MUCODE_TRACKING", "mlflow")
    env.setenv("MUCODE_ARTIFACTS_DIR", str(tmp_path))
    get_settings.cache_clear()
    rnd = _sft_set(store)
    ts = build_training_set(store, rnd, method="multi_rft")
    cfg = GeneratorTrainConfig(
        training_set=str(ts["id"]), base_model=str(tiny), learning_rate=3e-3, max_steps=2, logging_steps=1,
        effective_batch_size=2, per_device_train_batch_size=2, gradient_checkpointing=False, bf16="false",
    )
    mv = train_generator(cfg, store=store)
    facts = round_facts(store, _finished_round(store, None, 0))
    facts["experiment"] = "trk"  # the same group as the generator's run
    assert log_round(facts, get_settings())["backend"] == "mlflow"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("trk")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {mv["name"], "rounds"}
    loss = client.get_metric_history(runs[mv["name"]].info.run_id, "loss")
    assert [x.step for x in loss] == [1, 2]
    assert [x.value for x in loss] == pytest.approx(mv["metrics"]["train_losses"], rel=1e-5)
    assert runs[mv["name"]].data.tags["mucode.kind"] == "generator"
    auc = client.get_metric_history(runs["rounds"].info.run_id, "verifier/mbpp_test/roc_auc")
    assert [(x.step, x.value) for x in auc] == [(0, pytest.approx(0.81))]
