"""Inputs are checked where they enter: ``mucode experiment create`` refuses sizes that make no sense, datasets
and splits that do not exist and model folders that cannot load, naming the field and the problem, before
anything is stored; the commands that take sizes as options refuse them too. Valid configs and the configs of
experiments stored before these checks still load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.errors import ConfigError, MucodeError, NotFound
from app.protocol import LEGACY_DEFAULTS, ExperimentConfig, dataset_splits
from tests.helpers.cli import run_mucode

KNOWN = "known datasets: mbpp, mbpp_sanitized, humaneval, humaneval_plus, mbpp_plus"


def _mucode(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_mucode(list(args), env)


def _said(r: subprocess.CompletedProcess) -> str:
    return " ".join((r.stdout + r.stderr).split())  # the console may wrap a long line


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {"MUCODE_DATABASE_URL": f"sqlite:///{tmp_path / 'inputs.db'}", "MUCODE_BROKER_URL": "",
         "MUCODE_MODEL_CACHE_DIR": str(tmp_path / "models"), "COLUMNS": "250"}
    r = _mucode(e, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    return e


def _create(env: dict[str, str], tmp_path: Path, name: str, model: str, config: dict | None = None):
    args = ["experiment", "create", name, "--base-model", model]
    if config is not None:
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps(config))
        args += ["--config", str(f)]
    return _mucode(env, *args)


def _experiments(env: dict[str, str]) -> list[str]:
    r = _mucode(env, "experiment", "list", "--json")
    assert r.returncode == 0, r.stderr
    return [row["name"] for row in json.loads(r.stdout)]


# -- sizes ---------------------------------------------------------------------------------------------------
def test_a_negative_train_limit_is_refused_at_create(env, tmp_path, tiny_model_dir):
    r = _create(env, tmp_path, "neg", str(tiny_model_dir), {"train_limit": -1})
    said = _said(r)
    assert r.returncode == 2, said
    assert "invalid experiment config: train_limit: Input should be greater than 0 (got -1)" in said
    assert "Traceback" not in said
    assert _experiments(env) == []  # nothing stored


def test_several_bad_sizes_are_all_named_at_once(env, tmp_path, tiny_model_dir):
    bad = {"rollout": {"rollouts_per_problem": 0, "sampling": {"top_p": 0}},
           "verifier": {"learning_rate": 0, "effective_batch_size": -4},
           "generator": {"epochs": 0}, "eval": {"limit": 0, "temperature": -0.5}}
    r = _create(env, tmp_path, "many", str(tiny_model_dir), bad)
    said = _said(r)
    assert r.returncode == 2, said
    for part in ("rollout.rollouts_per_problem: Input should be greater than or equal to 1 (got 0)",
                 "rollout.sampling.top_p: Input should be greater than 0 (got 0)",
                 "verifier.learning_rate: Input should be greater than 0 (got 0)",
                 "verifier.effective_batch_size: Input should be greater than 0 (got -4)",
                 "generator.epochs: Input should be greater than 0 (got 0)",
                 "eval.limit: Input should be greater than 0 (got 0)",
                 "eval.temperature: Input should be greater than or equal to 0 (got -0.5)"):
        assert part in said, part
    assert _experiments(env) == []


@pytest.mark.parametrize(("path", "value", "problem"), [
    ("train_limit", 0, "greater than 0"),
    ("train_datasets", [], "at least 1 item"),
    ("rollout.turns", 0, "greater than or equal to 1"),
    ("rollout.batch_size", 0, "greater than or equal to 1"),
    ("rollout.sampling.max_new_tokens", 0, "greater than 0"),
    ("rollout.sampling.temperature", -0.1, "greater than or equal to 0"),
    ("rollout.sampling.top_p", 1.5, "less than or equal to 1"),
    ("verifier.pairs_per_problem", 0, "greater than 0"),
    ("verifier.l2_coeff", -1e-3, "greater than or equal to 0"),
    ("verifier.epochs", -1, "greater than 0"),
    ("verifier.per_device_batch_size", 0, "greater than 0"),
    ("verifier.max_length", 0, "greater than 0"),
    ("relabel.relabel_failed", -1, "greater than or equal to 0"),
    ("generator.learning_rate", -5e-7, "greater than 0"),
    ("generator.effective_batch_size", 0, "greater than 0"),
    ("generator.per_device_batch_size", -1, "greater than 0"),
    ("generator.max_length", 0, "greater than 0"),
    ("eval.turns", 0, "greater than or equal to 1"),
    ("eval.bon_candidates", 0, "greater than or equal to 1"),
    ("eval.bon_chains", 0, "greater than or equal to 1"),
    ("eval.max_new_tokens", 0, "greater than 0"),
])
def test_each_size_field_is_checked(path, value, problem):
    from app.experiments import build_config

    *sections, key = path.split(".")
    over: dict = {key: value}
    for section in reversed(sections):
        over = {section: over}
    with pytest.raises(ConfigError, match=rf"invalid experiment config: {path}: .*{problem}"):
        build_config(None, "m", over, None)


def test_limits_and_k_keep_their_meaningful_values():
    from app.experiments import build_config

    cfg = build_config(None, "m", {"train_limit": None, "eval": {"limit": None, "datasets": [],
                                                                 "temperature": 0.0, "max_new_tokens": None},
                                   "relabel": {"relabel_failed": 0}, "verifier": {"l2_coeff": 0.0},
                                   "rollout": {"sampling": {"temperature": 0.0, "top_p": 1.0}}}, None)
    assert cfg.train_limit is None and cfg.eval.limit is None and cfg.eval.datasets == []
    assert cfg.relabel.relabel_failed == 0 and cfg.rollout.sampling.temperature == 0.0


# -- datasets ------------------------------------------------------------------------------------------------
def test_an_unknown_dataset_is_refused_with_the_known_names(env, tmp_path, tiny_model_dir):
    r = _create(env, tmp_path, "ds", str(tiny_model_dir), {"train_datasets": ["mbpx:train"]})
    said = _said(r)
    assert r.returncode == 2, said
    assert "train_datasets: Value error, unknown dataset 'mbpx' in 'mbpx:train'" in said and KNOWN in said
    r = _create(env, tmp_path, "ds", str(tiny_model_dir), {"eval": {"datasets": ["mbpp:test", "lcb"]}})
    said = _said(r)
    assert r.returncode == 2 and "eval.datasets: Value error, unknown dataset 'lcb'" in said and KNOWN in said
    assert _experiments(env) == []


def test_a_split_that_does_not_exist_is_refused_with_the_splits(env, tmp_path, tiny_model_dir):
    r = _create(env, tmp_path, "split", str(tiny_model_dir),
                {"train_datasets": ["mbpp:training"], "eval": {"datasets": ["humaneval:train"]}})
    said = _said(r)
    assert r.returncode == 2, said
    assert "train_datasets: Value error, dataset mbpp has no split 'training' (in 'mbpp:training'); its splits: " \
           "prompt, test, validation, train" in said
    assert "eval.datasets: Value error, dataset humaneval has no split 'train' (in 'humaneval:train'); its " \
           "splits: test" in said
    assert _experiments(env) == []


def test_the_listed_splits_are_the_loaders_splits():
    from app.datasets import DATASETS, parse_dataset

    listed = dataset_splits()
    assert set(listed) == set(DATASETS)
    for name in DATASETS:
        assert listed[name] is not None, f"{name}: list its splits in app.protocol.dataset_splits"
        assert set(listed[name]) == {p.split for p in parse_dataset(name).problems}, name


# -- model folders -------------------------------------------------------------------------------------------
def _copy(tiny: Path, dest: Path) -> Path:
    shutil.copytree(tiny, dest)
    return dest


def test_broken_model_folders_are_refused_cheaply(tmp_path, tiny_model_dir):
    from app.model_registry import check_model_folder

    check_model_folder(tiny_model_dir)  # a complete folder passes

    corrupt = _copy(tiny_model_dir, tmp_path / "corrupt")
    (corrupt / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    with pytest.raises(MucodeError, match=r"corrupt: config.json is not valid JSON"):
        check_model_folder(corrupt)

    untyped = _copy(tiny_model_dir, tmp_path / "untyped")
    cfg = json.loads((untyped / "config.json").read_text())
    cfg.pop("model_type")
    (untyped / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MucodeError, match=r"config\.json names no model_type"):
        check_model_folder(untyped)

    weightless = _copy(tiny_model_dir, tmp_path / "weightless")
    (weightless / "model.safetensors").unlink()
    with pytest.raises(MucodeError, match=r"weightless has no weights: none of model.safetensors"):
        check_model_folder(weightless)

    sharded = _copy(tiny_model_dir, tmp_path / "sharded")
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MucodeError, match=r"names 1 shard\(s\) that are not there: model-00002-of-00002"):
        check_model_folder(sharded)
    index["weight_map"]["b"] = "model-00001-of-00002.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    check_model_folder(sharded)  # every shard there

    untokenized = _copy(tiny_model_dir, tmp_path / "untokenized")
    (untokenized / "tokenizer.json").unlink()
    with pytest.raises(MucodeError, match=r"untokenized has no tokenizer: none of tokenizer\.json"):
        check_model_folder(untokenized)

    with pytest.raises(NotFound, match="does not exist"):
        check_model_folder(tmp_path / "nowhere")


def test_check_model_folder_does_not_import_torch(tiny_model_dir):
    code = ("import sys; from app.model_registry import check_model_folder; "
            f"check_model_folder({str(tiny_model_dir)!r}); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_create_refuses_a_model_folder_that_cannot_load(env, tmp_path, tiny_model_dir):
    corrupt = _copy(tiny_model_dir, tmp_path / "corrupt")
    (corrupt / "config.json").write_text("{not json")
    r = _create(env, tmp_path, "broken", str(corrupt))
    said = _said(r)
    assert r.returncode == 2 and "config.json is not valid JSON" in said and str(corrupt) in said, said
    weightless = _copy(tiny_model_dir, tmp_path / "weightless")
    (weightless / "model.safetensors").unlink()
    r = _create(env, tmp_path, "broken", str(weightless))
    said = _said(r)
    assert r.returncode == 2 and "has no weights" in said, said
    assert _experiments(env) == []


def test_a_hub_name_not_pulled_is_still_accepted(env, tmp_path):
    r = _create(env, tmp_path, "hub", "some-org/not-pulled-yet")
    assert r.returncode == 0, _said(r)
    assert _experiments(env) == ["hub"]


# -- what still works ------------------------------------------------------------------------------------------
def test_a_valid_config_is_accepted(env, tmp_path, tiny_model_dir):
    config = {"train_datasets": ["mbpp:train", "mbpp_plus:train"], "train_limit": 3,
              "rollout": {"turns": 2, "rollouts_per_problem": 2, "sampling": {"temperature": 0.0, "top_p": 0.95}},
              "relabel": {"relabel_failed": 0},
              "eval": {"datasets": ["mbpp:test", "humaneval", "humaneval_plus:test"], "limit": 2}}
    r = _create(env, tmp_path, "ok", str(tiny_model_dir), config)
    assert r.returncode == 0, _said(r)
    r = _mucode(env, "experiment", "show", "ok", "--json")
    assert r.returncode == 0, r.stderr
    stored = json.loads(r.stdout)["config"]
    assert stored["train_limit"] == 3 and stored["relabel"]["relabel_failed"] == 0
    assert stored["eval"]["datasets"] == ["mbpp:test", "humaneval", "humaneval_plus:test"]


def test_an_experiment_stored_before_the_checks_still_loads(env):
    from app.store import Store

    # As an older mucode froze it: settings added since are absent, limits None, K=0, no evaluation datasets.
    old = ExperimentConfig(base_model="org/old", relabel={"relabel_failed": 0},
                           eval={"datasets": [], "limit": None}).model_dump(mode="json")
    for section, legacy in LEGACY_DEFAULTS.items():
        for key in legacy:
            old[section].pop(key)
    old["rollout"]["sampling"].pop("stop_after_code")
    store = Store(env["MUCODE_DATABASE_URL"])
    try:
        store.create_experiment("old", "mucode", "org/old", old)
    finally:
        store.dispose()
    cfg = ExperimentConfig.frozen(old)
    assert cfg.relabel.relabel_failed == 0 and cfg.eval.datasets == [] and cfg.train_limit is None
    assert cfg.harness.import_prelude is False  # its legacy value
    r = _mucode(env, "experiment", "show", "old", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"] == old


# -- commands that take sizes as options -------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["rollouts", "collect", "--model", "MODEL", "--limit", "-1"],
    ["rollouts", "collect", "--model", "MODEL", "-M", "0"],
    ["rollouts", "collect", "--model", "MODEL", "--max-new-tokens", "0"],
    ["eval", "--model", "MODEL", "--limit", "0"],
    ["eval", "--model", "MODEL", "-N", "0"],
    ["worker", "-Q", "execute", "--concurrency", "0"],
])
def test_size_options_are_refused_by_name(env, tiny_model_dir, args):
    args = [str(tiny_model_dir) if a == "MODEL" else a for a in args]
    option = next(a for a in args if a.startswith("-") and a not in ("--model", "-Q"))
    r = _mucode(env, *args)
    said = _said(r)
    assert r.returncode == 2, said
    assert f"Invalid value for '{option}'" in said, said
    assert "greater than or equal to 1" in said or "not in the range x>=1" in said, said
