"""Relabeling: build a generator SFT training set from the store, and export it (JSONL, Hugging Face dataset).

Methods (``method``; the experiment's method by default):
- ``mucode``: per (round, problem) the expert answer y* is the final-turn response with the highest score among
  that round's finished rollouts; score = ``LV + 100 * label`` (``expert="both"``, default), ``label`` only
  (``"oracle"``, ties to the lowest candidate id) or ``LV`` only (``"learned"``). Up to ``relabel_failed`` (K=3)
  failed trajectories with the highest scores are relabeled to y*; every successful trajectory is kept with its
  own final answer (``keep_successful``). If no rollout of a problem is correct, y* is the verifier's best
  incorrect response (paper behaviour), counted in ``stats["problems_without_correct"]``.
- ``multi_rft``: successful trajectories only, every state -> the trajectory's own final answer.
- ``rft``: single-turn RFT: correct turn-1 responses, state = the first prompt.
- ``rft_lv``: the ``top_k`` trajectories per problem by the verifier score of their final response, every state ->
  its own final answer, no relabeling.
Every kept trajectory of k turns gives k examples: state t = the messages shown at turn t (the prompt, then the
earlier (response, "Feedback: ...") pairs) -> target. Only train-split problems are used (enforced in the query).
With ``aggregate_rounds`` (default, paper) the set holds the examples of every round of the experiment up to this
one, each round relabeled with its own verifier (``rounds.verifier_out_id``).

All SQL lives in ``app/store/relabel.py``; this module resolves the configuration and shapes the rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.protocol import RelabelConfig
from app.store.relabel import EXPERT_VARIANTS, SFT_METHODS  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from app.store import Store

METHODS = SFT_METHODS


def relabel_config_of(experiment_config: dict[str, Any] | None) -> RelabelConfig:
    """The experiment's frozen relabel settings, or the protocol defaults.

    A setting that is not one of ``RelabelConfig``'s, or a value it refuses, is a ``ConfigError`` naming each
    bad field and value: building a training set with other settings than the frozen ones would be silent.
    """
    from pydantic import ValidationError

    from app.errors import ConfigError

    raw = (experiment_config or {}).get("relabel") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the experiment's relabel settings must be a mapping, not {raw!r}")
    try:
        return RelabelConfig(**raw)
    except ValidationError as exc:
        bad = "; ".join(
            f"relabel.{'.'.join(map(str, e['loc']))} = {e.get('input')!r}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"bad relabel setting(s) in the experiment's config: {bad}") from exc


def build_training_set(
    store: Store,
    round_ref: int | str,
    *,
    method: str | None = None,
    expert: str | None = None,
    relabel_failed: int | None = None,
    keep_successful: bool | None = None,
    aggregate_rounds: bool | None = None,
    top_k: int | None = None,
    verifier_id: int | None = None,
    name: str | None = None,
    rebuild: bool = False,
) -> dict[str, Any]:
    """Build the SFT training set of a round (id, ``EXPERIMENT/INDEX`` or ``EXPERIMENT`` = its latest round).

    Unset arguments come from the experiment's frozen config (``method``, ``relabel``) and then the protocol
    defaults. Idempotent: the same round and settings return the existing set unless ``rebuild``.
    Returns ``{"id", "name", "config", "stats", "created", ...}``.
    """
    rnd = store.sft_resolve_round(round_ref)
    exp_cfg = rnd.get("experiment_config") or {}
    rc = relabel_config_of(exp_cfg)
    method = method or exp_cfg.get("method") or rnd["method"] or "mucode"
    if method not in METHODS:
        from app.errors import MucodeError

        raise MucodeError(f"unknown relabel method {method!r}: one of {', '.join(METHODS)}")
    return store.sft_build(
        round_id=rnd["id"],
        method=method,
        expert=expert or rc.expert,
        relabel_failed=rc.relabel_failed if relabel_failed is None else relabel_failed,
        keep_successful=rc.keep_successful if keep_successful is None else keep_successful,
        top_k=(rc.relabel_failed if top_k is None else top_k),
        aggregate_rounds=rc.aggregate_rounds if aggregate_rounds is None else aggregate_rounds,
        verifier_id=verifier_id,
        name=name,
        rebuild=rebuild,
    )


def _msg(d: dict[str, Any]) -> dict[str, str]:
    return {"role": str(d["role"]), "content": str(d.get("content") or "")}


def example_records(store: Store, training_set_id: int) -> Iterator[dict[str, Any]]:
    """One record per example: ``messages`` (state + the assistant target) and its full lineage."""
    for r in store.sft_example_rows(training_set_id):
        prompt = r["prompt"]
        if isinstance(prompt, str):  # JSON read back as text on an unusual driver
            prompt = json.loads(prompt)
        messages = [_msg(x) for x in prompt] + [{"role": "assistant", "content": r["target"]}]
        yield {
            "messages": messages,
            "example_id": r["id"],
            "training_set_id": r["training_set_id"],
            "problem_id": r["problem_id"],
            "problem": r["external_id"],
            "round_id": r["round_id"],
            "rollout_id": r["rollout_id"],
            "sample_index": r["sample_index"],
            "generator_id": r["generator_id"],
            "turn_index": r["turn_index"],
            "source": r["source"],
            "target_candidate_id": r["target_candidate_id"],
            "target_rollout_id": r["target_rollout_id"],
            "target_turn_index": r["target_turn_index"],
            "target_correct": None if r["target_correct"] is None else bool(r["target_correct"]),
            "verifier_id": r["verifier_id"],
        }


def export_jsonl(store: Store, training_set_id: int, path: str | Path) -> int:
    """Write the set as JSONL (one record per line, see ``example_records``); returns the number of lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for rec in example_records(store, training_set_id):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def hf_features():
    from datasets import Features, List, Value

    int64, string = Value("int64"), Value("string")
    return Features(
        {
            "messages": List({"role": string, "content": string}),
            "example_id": int64, "training_set_id": int64, "problem_id": int64, "problem": string,
            "round_id": int64, "rollout_id": int64, "sample_index": int64, "generator_id": int64,
            "turn_index": int64, "source": string, "target_candidate_id": int64, "target_rollout_id": int64,
            "target_turn_index": int64, "target_correct": Value("bool"), "verifier_id": int64,
        }
    )


def to_hf_dataset(store: Store, training_set_id: int):
    """The set as a ``datasets.Dataset`` (same columns as the JSONL export)."""
    from datasets import Dataset

    return Dataset.from_list(list(example_records(store, training_set_id)), features=hf_features())
