"""The frozen experiment config: a setting added after an experiment was created keeps its legacy value."""

from __future__ import annotations

from app.protocol import LEGACY_DEFAULTS, ExperimentConfig


def test_a_new_experiment_gets_the_reference_defaults():
    cfg = ExperimentConfig(base_model="m")
    assert cfg.harness.import_prelude is True
    assert cfg.verifier.pair_sampling == "per_round"
    assert cfg.eval.verifier_pairing == "same_round"
    # Reading back what was frozen gives the same config.
    assert ExperimentConfig.frozen(cfg.model_dump(mode="json")) == cfg


def test_an_experiment_stored_before_a_setting_existed_keeps_what_it_ran_with():
    stored = ExperimentConfig(base_model="m").model_dump(mode="json")
    for section, legacy in LEGACY_DEFAULTS.items():
        for key in legacy:
            stored[section].pop(key)
    stored.pop("harness")
    cfg = ExperimentConfig.frozen(stored)
    assert cfg.harness.import_prelude is False
    assert cfg.verifier.pair_sampling == "pooled"
    assert cfg.eval.verifier_pairing == "previous_round"
    # A stored value always wins over the legacy one.
    stored["verifier"]["pair_sampling"] = "per_round"
    assert ExperimentConfig.frozen(stored).verifier.pair_sampling == "per_round"
