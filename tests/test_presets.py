"""Presets: ``--preset reference`` gives the µCode reference code's protocol in one word, the defaults stay
mucode's, and ``experiment show`` says which preset a config follows and what differs from the defaults."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from app import presets
from app.errors import ConfigError
from app.protocol import LEGACY_DEFAULTS, ExperimentConfig
from tests.helpers.cli import run_mucode


def _build(preset, overrides=None, method=None):
    from app.experiments import build_config

    return build_config(method, "m", dict(overrides or {}), preset)


def test_the_default_preset_is_the_defaults():
    assert _build(None) == _build("mucode") == ExperimentConfig(base_model="m")
    assert presets.differences(_build("mucode")) == []
    assert presets.closest_preset(_build(None)) == ("mucode", [])


def test_reference_preset_is_the_reference_protocol():
    cfg = _build("reference")
    # Everything the reference does where a setting exists.
    assert cfg.rollout.stop_rule == "public_and_private"
    assert cfg.harness.import_prelude is True
    assert cfg.rollout.train_shown_tests == "all"
    assert cfg.verifier.pair_sampling == "per_round"
    assert cfg.eval.verifier_pairing == "same_round"
    assert cfg.eval.greedy_metric == "last_turn"
    assert cfg.rollout.sampling.stop_after_code is False
    assert (cfg.rollout.turns, cfg.rollout.rollouts_per_problem, cfg.rollout.sampling.temperature,
            cfg.rollout.sampling.top_p, cfg.rollout.sampling.max_new_tokens) == (3, 15, 0.7, 1.0, 1000)
    assert (cfg.verifier.pairs_per_problem, cfg.verifier.l2_coeff, cfg.eval.bon_candidates,
            cfg.eval.bon_chains, cfg.eval.selectors) == (32, 1e-3, 5, 10, ["pt+lv"])
    # mucode's defaults keep all of it but the stop rule (a bug fix: rollouts stop on the public tests).
    assert presets.differences(cfg) == [("rollout.stop_rule", "public_and_private", "public")]
    assert presets.closest_preset(cfg) == ("reference", [])


def test_file_values_go_over_the_preset_section_by_section():
    cfg = _build("reference", {"rollout": {"turns": 2, "sampling": {"max_new_tokens": 256}},
                               "eval": {"limit": 5}}, method="multi_rft")
    assert cfg.rollout.turns == 2 and cfg.rollout.sampling.max_new_tokens == 256
    assert cfg.rollout.stop_rule == "public_and_private" and cfg.rollout.sampling.temperature == 0.7
    assert cfg.eval.limit == 5 and cfg.eval.greedy_metric == "last_turn" and cfg.method == "multi_rft"
    name, own = presets.closest_preset(cfg)
    assert name == "reference"
    assert own == [("eval.limit", 5, None), ("method", "multi_rft", "mucode"),
                   ("rollout.sampling.max_new_tokens", 256, 1000), ("rollout.turns", 2, 3)]
    # A file can also take a preset's value back to mucode's.
    back = _build("reference", {"rollout": {"stop_rule": "public"}})
    assert back == ExperimentConfig(base_model="m")


def test_unknown_preset_and_bad_values_are_clear_errors():
    with pytest.raises(ConfigError, match=r"unknown preset 'paper'.*mucode, reference"):
        _build("paper")
    with pytest.raises(ConfigError, match=r"eval\.greedy_metric"):
        _build("reference", {"eval": {"greedy_metric": "best"}})


def test_a_legacy_experiment_shows_what_it_ran_with():
    stored = ExperimentConfig(base_model="m").model_dump(mode="json")
    for section, legacy in LEGACY_DEFAULTS.items():
        for key in legacy:
            stored[section].pop(key, None)
    cfg = ExperimentConfig.frozen(stored)
    diffs = {path: (a, b) for path, a, b in presets.differences(cfg)}
    assert diffs["eval.greedy_metric"] == ("first_public", "last_turn")
    assert diffs["harness.import_prelude"] == (False, True)
    lines = presets.describe(cfg)
    assert lines[0].startswith("preset mucode") and "eval.greedy_metric = first_public (preset last_turn)" in lines[1]


# -- the CLI -----------------------------------------------------------------------------------------------------
def _mucode(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_mucode(list(args), env)


def test_experiment_create_and_show_with_a_preset(tmp_path: Path, tiny_model_dir):
    from app.store import Store

    db = f"sqlite:///{tmp_path / 'p.db'}"
    env = {"MUCODE_DATABASE_URL": db, "MUCODE_BROKER_URL": "", "COLUMNS": "250"}
    assert _mucode(env, "db", "upgrade").returncode == 0
    model = str(tiny_model_dir)
    r = _mucode(env, "experiment", "create", "ref", "--preset", "reference", "--base-model", model, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["preset"] == "reference" and out["config"]["rollout"]["stop_rule"] == "public_and_private"
    r = _mucode(env, "experiment", "create", "plain", "--base-model", model)
    assert r.returncode == 0, r.stderr
    stored = Store(db).get_experiment("ref").config
    assert ExperimentConfig.frozen(stored) == _build("reference").model_copy(update={"base_model": model})
    assert Store(db).get_experiment("plain").config == ExperimentConfig(base_model=model).model_dump(mode="json")

    show = _mucode(env, "experiment", "show", "ref")
    assert show.returncode == 0, show.stderr
    text = " ".join(show.stdout.split())
    assert "preset reference" in text and "changed from the reference preset: nothing" in text
    assert "differs from mucode's defaults in: rollout.stop_rule = public_and_private (default public)" in text
    assert "stop rule public_and_private" in text and "counted on the last turn" in text
    plain = " ".join(_mucode(env, "experiment", "show", "plain").stdout.split())
    assert "preset mucode" in plain and "changed from the mucode preset: nothing" in plain
    js = json.loads(_mucode(env, "experiment", "show", "ref", "--json").stdout)
    assert js["preset"] == "reference" and js["changed_from_preset"] == []
    assert js["changed_from_defaults"] == [
        {"setting": "rollout.stop_rule", "value": "public_and_private", "default": "public"}]

    # Configs are frozen: the same name under another preset is refused; a wrong preset name is a usage error.
    r = _mucode(env, "experiment", "create", "plain", "--preset", "reference", "--base-model", model)
    assert r.returncode == 2 and "another config" in r.stderr
    r = _mucode(env, "experiment", "create", "x", "--preset", "paper", "--base-model", model)
    assert r.returncode == 2 and "unknown preset 'paper'" in " ".join(r.stderr.split())


def test_eval_errors_about_presets(tmp_path: Path, tiny_model_dir):
    db = f"sqlite:///{tmp_path / 'e.db'}"
    env = {"MUCODE_DATABASE_URL": db, "MUCODE_BROKER_URL": "", "COLUMNS": "250"}
    assert _mucode(env, "db", "upgrade").returncode == 0
    assert _mucode(env, "experiment", "create", "x", "--base-model", str(tiny_model_dir)).returncode == 0
    r = _mucode(env, "eval", "--experiment", "x", "--preset", "reference")
    assert r.returncode == 2 and "--preset is for --model" in " ".join(r.stderr.split())
    r = _mucode(env, "eval", "--model", str(tiny_model_dir), "--preset", "paper")
    assert r.returncode == 2 and "unknown preset 'paper'" in " ".join(r.stderr.split())


@pytest.mark.slow
def test_eval_a_model_under_the_reference_protocol(tmp_path: Path, tiny_model_dir):
    """``mucode eval --model M --preset reference``: the chains run under the reference's stop rule and greedy
    counts the last turn; the default protocol's evaluations keep other names."""
    from app.store import Store

    db = f"sqlite:///{tmp_path / 'e.db'}"
    env = {"MUCODE_DATABASE_URL": db, "MUCODE_BROKER_URL": "", "MUCODE_ARTIFACTS_DIR": str(tmp_path / "art"),
           "MUCODE_ALLOW_WEAK_ISOLATION": os.environ.get("MUCODE_ALLOW_WEAK_ISOLATION", "false"), "COLUMNS": "250"}
    assert _mucode(env, "db", "upgrade").returncode == 0
    assert _mucode(env, "data", "load", "mbpp").returncode == 0
    args = ["eval", "--model", str(tiny_model_dir), "-d", "mbpp:test", "--limit", "2", "-T", "2", "-s", "pt",
            "-N", "1", "-C", "1", "--max-new-tokens", "8", "--json"]
    r = _mucode(env, *args, "--preset", "reference")
    assert r.returncode == 0, r.stderr
    evs = {e["mode"]: e for e in json.loads(r.stdout)}
    slug = Path(tiny_model_dir).name
    assert evs["greedy"]["name"] == f"eval/{slug}-reference/model/mbpp-test/greedy"
    assert evs["greedy"]["metrics"]["metric"] == "last_turn" and evs["bon"]["metrics"]["metric"] == "first_public"
    store = Store(db)
    for e in evs.values():
        cfg = store.get_evaluation(e["id"]).config
        assert cfg["stop_rule"] == "public_and_private" and cfg["import_prelude"] is True
    r = _mucode(env, *args)
    assert r.returncode == 0, r.stderr
    plain = {e["mode"]: e for e in json.loads(r.stdout)}
    assert plain["greedy"]["name"] == f"eval/{slug}/model/mbpp-test/greedy"
    assert store.get_evaluation(plain["greedy"]["id"]).config["stop_rule"] == "public"
