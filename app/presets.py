"""Named protocols an experiment can start from, and how a config differs from the defaults.

- ``mucode`` (the default): the paper's protocol as mucode runs it, i.e. ``ExperimentConfig``'s defaults. It keeps
  everything the µCode reference code does that moves numbers on purpose (import prelude, per-round verifier
  pairs, same-round verifier for the search, MBPP train showing its 3 tests, greedy counted on the last turn)
  and fixes its bugs, including the rollout stop rule: a turn that passes the public tests ends the trajectory.
- ``reference``: the reference code's protocol wherever a setting exists: the same, plus the stop rule on the
  public *and* private tests. Every value is written out, so the preset stays the reference's even if a default
  changes. Bugs fixed without a setting (challenge tests that never ran, unterminated fences, raw tracebacks, the
  SFT mask) are listed in docs/protocol.md.

A config is built as defaults <- preset <- config file <- command-line flags (``build``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

REFERENCE: dict[str, Any] = {
    "rollout": {
        "turns": 3,
        "rollouts_per_problem": 15,
        "stop_rule": "public_and_private",
        "train_shown_tests": "all",
        "sampling": {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 1000, "stop_after_code": False},
    },
    "verifier": {
        "loss": "bt", "pairs_per_problem": 32, "pair_sampling": "per_round", "l2_coeff": 1e-3,
        "learning_rate": 1e-6, "epochs": 2.0, "effective_batch_size": 64, "max_length": 2048, "use_lora": False,
    },
    "relabel": {"expert": "both", "relabel_failed": 3, "keep_successful": True, "aggregate_rounds": True},
    "generator": {
        "learning_rate": 5e-7, "epochs": 2.0, "effective_batch_size": 16, "max_length": 8192, "use_lora": False,
        "from_base_each_round": True,
    },
    "eval": {
        "datasets": ["mbpp:test", "humaneval:test"], "turns": 3, "bon_candidates": 5, "bon_chains": 10,
        "selectors": ["pt+lv"], "greedy": True, "temperature": 0.7, "verifier_pairing": "same_round",
        "greedy_metric": "last_turn",
    },
    "harness": {"import_prelude": True},
}  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {"mucode": {}, "reference": REFERENCE}
DEFAULT_PRESET = "mucode"
PRESET_HELP = {
    "mucode": "the paper's protocol with the reference code's bugs fixed (the defaults)",
    "reference": "the µCode reference code's protocol (stop rollouts on public and private tests)",
}


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top, section by section (nested mappings merge; other values replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (choose one of: {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[name])


def build(preset: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config fields of preset (default ``mucode``) <- ``overrides`` (a config file's fields, then flags)."""
    return merge(preset_values(preset or DEFAULT_PRESET), overrides)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"rollout": {"turns": 3}}`` -> ``{"rollout.turns": 3}`` (lists stay whole values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


_UNSET = object()


def differences(config: Any, preset: str = DEFAULT_PRESET) -> list[tuple[str, Any, Any]]:
    """(path, value in ``config``, value under ``preset``) for every setting where they differ, in path order.

    A setting absent on one side (a trainer override) shows as ``None`` there. ``base_model`` is never a
    difference (it has no default).
    """
    from app.protocol import ExperimentConfig

    mine = flatten(config.model_dump(mode="json"))
    ref = flatten(ExperimentConfig(**build(preset, {"base_model": config.base_model})).model_dump(mode="json"))
    out = []
    for path in sorted(set(mine) | set(ref)):
        if path == "base_model":
            continue
        a, b = mine.get(path, _UNSET), ref.get(path, _UNSET)
        if a != b:
            out.append((path, None if a is _UNSET else a, None if b is _UNSET else b))
    return out


def closest_preset(config: Any) -> tuple[str, list[tuple[str, Any, Any]]]:
    """The preset the config is closest to (fewest differences; ``mucode`` on a tie) and the differences."""
    best = min(PRESETS, key=lambda name: (len(differences(config, name)), name != DEFAULT_PRESET))
    return best, differences(config, best)


def describe(config: Any) -> list[str]:
    """Lines for ``experiment show``: the preset the protocol follows and what differs from it and from the
    defaults."""
    name, own = closest_preset(config)
    lines = [f"preset {name}: {PRESET_HELP[name]}", f"changed from the {name} preset: " + _fmt(own, "preset")]
    if name != DEFAULT_PRESET:
        lines.append("differs from mucode's defaults in: " + _fmt(differences(config, DEFAULT_PRESET), "default"))
    return lines


def _fmt(diffs: list[tuple[str, Any, Any]], other: str) -> str:
    return "; ".join(f"{path} = {_value(a)} ({other} {_value(b)})" for path, a, b in diffs) or "nothing"


def _value(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)
