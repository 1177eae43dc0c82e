"""Which (generator, verifier) pair an evaluation used, as `round status`, the CLI tables and the dashboard name
it: ``G<j>`` / ``RM<j>`` for an experiment's own models, the model version's name for any other."""

from __future__ import annotations

import pytest

from app.db import models as m
from app.errors import MucodeError
from tests.helpers import seed


def _seed(store) -> dict:
    """Rounds 0 (G0 -> G1, RM0) and 1 (G1, RM1), evaluations in both pairings, one standalone evaluation."""
    g0 = seed.add_model(store, "base")
    g1 = seed.add_model(store, "exp/r0/gen")
    r0 = seed.add_round(store, "exp", 0, generator_id=g0)
    r1 = seed.add_round(store, "exp", 1, generator_id=g1)
    other = seed.add_model(store, "someone-elses-verifier", kind="verifier")
    with store.session() as s:
        v0 = m.ModelVersion(name="exp-r0-verifier-bt", kind="verifier", base_model="tiny", uri="x", round_id=r0)
        v1 = m.ModelVersion(name="exp-r1-verifier-bt", kind="verifier", base_model="tiny", uri="y", round_id=r1)
        s.add_all([v0, v1])
        s.flush()
        v0, v1 = v0.id, v1.id
        s.get(m.Round, r0).generator_out_id, s.get(m.Round, r0).verifier_out_id = g1, v0
        s.get(m.Round, r1).verifier_in_id, s.get(m.Round, r1).verifier_out_id = v0, v1
        exp_id = s.get(m.Round, r0).experiment_id
    ev = {}
    for name, rid, gid, vid in (("r0/G0", r0, g0, v0), ("r0/G1", r0, g1, v0), ("r1/G1", r1, g1, v1),
                                ("r1/G1-other", r1, g1, other), ("r1/G1-none", r1, g1, None)):
        ev[name] = store.create_evaluation(f"exp/{name}/mbpp-test/greedy", generator_id=gid, verifier_id=vid,
                                           dataset="mbpp", split="test", mode="greedy", round_id=rid)
    ev["standalone"] = store.create_evaluation("eval/x", generator_id=g1, verifier_id=v1, dataset="mbpp",
                                               split="test", mode="greedy", experiment_id=exp_id)
    return ev


def test_evaluation_pairs_name_the_generator_and_the_verifier(store):
    ev = _seed(store)
    pairs = store.evaluation_pairs(list(ev.values()))
    got = {k: (pairs[i]["generator"], pairs[i]["verifier"]) for k, i in ev.items()}
    assert got == {
        "r0/G0": ("G0", "RM0"),  # the round's own generator with its own verifier
        "r0/G1": ("G1", "RM0"),  # previous-round pairing: the trained generator with the round's verifier
        "r1/G1": ("G1", "RM1"),
        "r1/G1-other": ("G1", "someone-elses-verifier"),
        "r1/G1-none": ("G1", None),
        "standalone": ("exp/r0/gen", "RM1"),  # no round: the generator by name, the verifier still the experiment's
    }
    assert pairs[ev["r1/G1"]]["verifier_model"] == "exp-r1-verifier-bt"
    assert store.evaluation_pairs([]) == {}
    dash = {e["id"]: (e["generator_label"], e["verifier_label"]) for e in store.dash_evaluations()}
    assert dash[ev["r0/G0"]] == ("G0", "RM0") and dash[ev["r0/G1"]] == ("G1", "RM0")
    assert dash[ev["r1/G1"]] == ("G1", "RM1") and dash[ev["r1/G1-other"]] == ("G1", None)
    assert dash[ev["standalone"]] == (None, "RM1")


def test_dashboard_pair_text():
    from dashboard.common import eval_pair

    labelled = {"generator_label": "G1", "verifier_label": "RM1", "generator": "a", "verifier": "b"}
    assert eval_pair(labelled) == "G1 · RM1"
    assert eval_pair({"generator_label": None, "verifier_label": None, "generator": "a", "verifier": "b"}) == "a · b"
    assert eval_pair({"generator_label": "G0", "verifier_label": None, "generator": "a", "verifier": None}) == "G0"


def test_rounds_table_says_which_round_is_final(store):
    ev = _seed(store)
    assert ev
    with store.session() as s:
        exp_id = s.query(m.Experiment).filter_by(name="exp").one().id
    rid = store.create_round(exp_id, 2, final=True)
    rows = {r["round"]: r["final"] for r in store.dash_rounds()}
    assert rows == {0: False, 1: False, 2: True}
    assert store.get_round(rid).final is True
    assert store.create_round(exp_id, 2, final=True) == rid  # idempotent
    with pytest.raises(MucodeError, match="exists as a final round"):  # a round's plan never changes
        store.create_round(exp_id, 2)
