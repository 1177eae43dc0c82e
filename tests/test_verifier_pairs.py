"""Verifier pairs per round (the reference's ``merge_datasets``) vs pooled, and the hold-out off by default.

A seeded store holds three rounds whose problems have both classes in different rounds, so that the per-round
draw, the pooled draw and RM_k's growing sets can each be told apart by their counts and by where each pair's
responses come from (every response names its round: ``{problem}/r{round}/s{sample}/t{turn}/good|bad``).
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from app.db import models as m
from app.errors import MucodeError
from app.hashing import json_hash
from tests.helpers import seed
from trainers.verifier.config import VerifierTrainingConfig
from trainers.verifier.data import build_training_set, default_training_set_name, draw_pairs

# one tuple per rollout: the verdict of each of its turns
MIXED = [(False, False, True), (False, True), (False, False, False)]  # correct at t3, at t2, never
ALL_GOOD = [(True,), (True,)]
ALL_BAD = [(False, False), (False,)]
# per problem, the rollouts of rounds 0, 1, 2 (None: no rollout in that round)
PLAN = {
    "mbpp/601": (MIXED, MIXED, MIXED),
    "mbpp/602": (ALL_GOOD, MIXED, ALL_BAD),  # pooled pairs r0's right answers with r2's wrong ones
    "mbpp/603": (ALL_GOOD, ALL_BAD, ALL_GOOD),  # both classes only across rounds: no per-round pair
    "mbpp/604": (None, None, MIXED),
    "mbpp/11": (MIXED, MIXED, MIXED),  # a test problem: never a training pair
}
# problems with both classes within the round
MIXED_IN = {0: {"mbpp/601"}, 1: {"mbpp/601", "mbpp/602"}, 2: {"mbpp/601", "mbpp/604"}}


def seed_rounds(store, *, reverse: bool = False) -> dict:
    """The plan above; ``reverse`` writes rounds, problems and rollouts in the opposite order (other ids)."""
    order = (lambda xs: list(reversed(list(xs)))) if reverse else list
    gen = seed.add_model(store, "gen")
    pids = {ext: seed.add_problem(store, ext, split="test" if ext == "mbpp/11" else "train")
            for ext in order(PLAN)}
    rounds = {ri: seed.add_round(store, "exp", ri, generator_id=gen) for ri in order(range(3))}
    for ri in order(range(3)):
        for ext in order(PLAN):
            specs = PLAN[ext][ri]
            for s, turns in order(enumerate(specs or [])):
                tagged = [{"response": f"{ext}/r{ri}/s{s}/t{t}/{'good' if ok else 'bad'}", "public": ok,
                           "private": ok} for t, ok in enumerate(turns, start=1)]
                seed.add_rollout(store, problem_id=pids[ext], sample_index=s, turns=tagged, round_id=rounds[ri],
                                 generator_id=gen)
    return {"pids": pids, "rounds": [rounds[i] for i in range(3)]}


def _pairs_by_content(store, ts_id) -> list[tuple[str, int, str, str]]:
    """(problem, pair index, chosen response, rejected response), in stored order."""
    pairs = store.verifier_pairs(ts_id)
    ids = {p["chosen_candidate_id"] for p in pairs} | {p["rejected_candidate_id"] for p in pairs}
    with store.session() as s:
        text = dict(s.execute(select(m.Candidate.id, m.Candidate.response).where(m.Candidate.id.in_(ids))).all())
    return [(text[p["chosen_candidate_id"]].split("/r")[0], p["pair_index"], text[p["chosen_candidate_id"]],
             text[p["rejected_candidate_id"]]) for p in pairs]


def _round_of(response: str) -> int:
    return int(response.split("/")[2][1:])


def test_rm_k_gets_the_pairs_of_each_round_drawn_in_that_round(store):
    w = seed_rounds(store)
    cfg = VerifierTrainingConfig(pairs_per_problem=32)
    assert cfg.pair_sampling == "per_round" and cfg.holdout_fraction == 0.0  # the paper's defaults
    drawn = {}
    for k in range(3):
        ts_id = build_training_set(store, w["rounds"][: k + 1], cfg)
        pairs = _pairs_by_content(store, ts_id)
        drawn[k] = pairs
        # RM_k's pair count = the sum over rounds 0..k of 32 per problem with both classes in that round
        assert len(pairs) == sum(32 * len(MIXED_IN[r]) for r in range(k + 1))
        ts = store.get_verifier_training_set(ts_id)
        assert ts["stats"]["pairs"] == len(pairs) == ts["num_pairs"]
        assert {int(r): st["pairs"] for r, st in ts["stats"]["by_round"].items()} == {
            r: 32 * len(MIXED_IN[r]) for r in range(k + 1)}
        assert ts["config"]["pair_sampling"] == "per_round" and ts["config"]["holdout_problem_ids"] == []
        per_problem_round: dict[tuple[str, int], int] = {}
        for ext, _, chosen, rejected in pairs:
            assert chosen.endswith("good") and rejected.endswith("bad")
            # both responses of a pair come from the same round's rollouts, of a problem mixed in that round
            r = _round_of(chosen)
            assert _round_of(rejected) == r and ext in MIXED_IN[r]
            per_problem_round[(ext, r)] = per_problem_round.get((ext, r), 0) + 1
        assert per_problem_round == {(e, r): 32 for r in range(k + 1) for e in MIXED_IN[r]}
        # a problem's pair indexes run on across its rounds, round by round
        for ext in {p[0] for p in pairs}:
            mine = [p for p in pairs if p[0] == ext]
            assert [p[1] for p in mine] == list(range(len(mine)))
            assert [_round_of(p[2]) for p in mine] == sorted(_round_of(p[2]) for p in mine)
    # RM_{k+1}'s set extends RM_k's: the earlier rounds' pairs are drawn exactly as before
    assert [p for p in drawn[1] if _round_of(p[2]) == 0] == drawn[0]
    assert [p for p in drawn[2] if _round_of(p[2]) <= 1] == drawn[1]
    assert "mbpp/603" not in {p[0] for p in drawn[2]}  # its classes never meet within a round
    # the same store draws the same pairs again (a set under another name is built anew)
    again = build_training_set(store, w["rounds"], cfg, name="again")
    assert _pairs_by_content(store, again) == drawn[2]
    assert store.verifier_training_set_leaks(again) == []


def test_pooled_keeps_the_single_draw_and_its_set_names(store):
    w = seed_rounds(store)
    cfg = VerifierTrainingConfig(pairs_per_problem=32, pair_sampling="pooled", seed=3)
    ts_id = build_training_set(store, w["rounds"], cfg)
    ts = store.get_verifier_training_set(ts_id)
    # the name a pooled set had before per-round sampling existed: stored sets are found again
    old_key = {"round_ids": sorted(w["rounds"]), "loss": "bt", "pairs_per_problem": 32, "holdout_fraction": 0.0,
               "seed": 3}
    assert ts["name"] == default_training_set_name(w["rounds"], cfg) == f"verifier-bt-{json_hash(old_key)[:12]}"
    assert default_training_set_name(w["rounds"], VerifierTrainingConfig(seed=3)) != ts["name"]
    pairs = _pairs_by_content(store, ts_id)
    # 32 per problem with both classes among all rounds' rows together, including 602 and 603 across rounds
    assert {p[0] for p in pairs} == {"mbpp/601", "mbpp/602", "mbpp/603", "mbpp/604"}
    assert len(pairs) == 4 * 32 and all(p[1] < 32 for p in pairs)
    assert any(_round_of(p[2]) != _round_of(p[3]) for p in pairs)
    # drawn as before: one Random(f"{seed}:{external_id}") per problem over its rows in store order
    rows = [r for r in store.verifier_training_rows(w["rounds"]) if r["external_id"] == "mbpp/603"]
    rng = random.Random("3:mbpp/603")
    pos = [r["candidate_id"] for r in rows if r["label"]]
    neg = [r["candidate_id"] for r in rows if not r["label"]]
    first = [(rng.choice(pos), rng.choice(neg)) for _ in range(32)]
    stored = [(p["chosen_candidate_id"], p["rejected_candidate_id"]) for p in store.verifier_pairs(ts_id)
              if p["problem_id"] == w["pids"]["mbpp/603"]]
    assert stored == first
    assert draw_pairs(store.verifier_training_rows(w["rounds"]), 32, 3)[0] == store.verifier_pairs(ts_id)


def test_pairs_do_not_depend_on_insertion_order(sqlite_store, pg_store):
    """The same content written in opposite orders (other ids everywhere): the same pairs, by content."""
    got = []
    for st, reverse in ((sqlite_store, False), (pg_store, True)):
        w = seed_rounds(st, reverse=reverse)
        got.append([sorted(_pairs_by_content(st, build_training_set(st, w["rounds"], VerifierTrainingConfig(
            pair_sampling=mode, holdout_fraction=0.25)))) for mode in ("per_round", "pooled")])
    assert got[0] == got[1]


def test_no_hold_out_by_default_and_metrics_without_one(sqlite_store, monkeypatch):
    from typer.testing import CliRunner

    from app.cli.main import root
    from app.config import get_settings
    from trainers.verifier.evaluate import evaluate_verifier

    store = sqlite_store
    w = seed_rounds(store)
    cfg = VerifierTrainingConfig()
    ts_id = build_training_set(store, w["rounds"], cfg)
    ts = store.get_verifier_training_set(ts_id)
    assert ts["stats"]["holdout_problems"] == 0 and ts["stats"]["train_problems"] == 4
    vid = store.add_verifier_version(name="v0", base_model="tiny", uri="/nowhere", config=cfg.to_dict(),
                                     training_set_id=ts_id)
    # nothing to score (no hold-out, no MBPP-test evaluation): no model is loaded, both parts are None
    ev = evaluate_verifier(store, vid, score_missing=True)
    assert ev["holdout"] is None and ev["mbpp_test"] is None and ev["newly_scored"] == 0
    from dashboard.common import metric_parts

    assert metric_parts(store.get_verifier(vid)["metrics"]) == {"–": {}}  # the dashboard: nothing measured
    monkeypatch.setenv("MUCODE_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    monkeypatch.delenv("MUCODE_BROKER_URL", raising=False)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        res = runner.invoke(root, ["verifier", "metrics", "v0", "--stored"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "held-out: none" in res.output and "held-out train problems" not in res.output
        assert "Traceback" not in res.output
        ids = ",".join(map(str, w["rounds"]))
        res = runner.invoke(root, ["verifier", "dataset", "--rounds", ids, "--pair-sampling", "pooled"],
                            catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "pairs: 128" in res.output and "holdout_problems: 0" in res.output
        res = runner.invoke(root, ["verifier", "dataset", "--rounds", ids, "--holdout-fraction", "0.25"],
                            catch_exceptions=False)
        assert res.exit_code == 0 and "holdout_problems: 1" in res.output, res.output
        res = runner.invoke(root, ["verifier", "dataset", "--rounds", ids, "--pair-sampling", "pooledd"])
        assert isinstance(res.exception, MucodeError) and "pair_sampling must be" in str(res.exception)
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("value", ["both", ""])
def test_pair_sampling_is_checked(value):
    with pytest.raises(ValueError, match="pair_sampling"):
        VerifierTrainingConfig(pair_sampling=value)
