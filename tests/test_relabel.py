"""Relabeling on hand-built stores (SQLite and Postgres): exact expected examples for every method."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, update

from app.db import models as m
from app.errors import MucodeError
from tests.helpers import seed
from trainers.relabel import build_training_set, example_records, export_jsonl, to_hf_dataset


def t(name: str, *, ok: bool = False, lv: dict | None = None, public: bool | None = None) -> dict:
    """One single-candidate turn whose response text is its name."""
    return {"response": name, "public": ok if public is None else public, "private": ok, "scores": lv or {}}


def _set_round(store, round_id: int, **values) -> None:
    with store.session() as s:
        s.execute(update(m.Round).where(m.Round.id == round_id).values(**values))


@pytest.fixture
def world(store):
    """Two rounds of one experiment; problems A, B (no correct), D (Best-of-N turns) on train, C on test."""
    v0 = seed.add_model(store, "rm0", kind="verifier")
    v1 = seed.add_model(store, "rm1", kind="verifier")
    g0 = seed.add_model(store, "gen0")
    r0 = seed.add_round(store, "exp", 0, generator_id=g0)
    _set_round(store, r0, verifier_out_id=v0)
    A = seed.add_problem(store, "mbpp/601")
    B = seed.add_problem(store, "mbpp/602")
    C = seed.add_problem(store, "mbpp/11", split="test")
    D = seed.add_problem(store, "mbpp/603")
    ro: dict[str, int] = {}

    def add(name, problem, turns, round_id=r0, done=True, index=None):
        ro[name] = seed.add_rollout(
            store, problem_id=problem, sample_index=index if index is not None else int(name[-1]),
            turns=turns, round_id=round_id, generator_id=g0, done=done,
        )

    # Problem A. Under rm0 the final scores are A0 100.2, A1 100.5 (y*), A2 .8, A3 .1, A4 .6, A5 .7.
    # rm1 scores on round-0 candidates would flip y* to A0 if (wrongly) used for round 0.
    add("A0", A, [t("A0-t1", ok=True, lv={v0: 0.2, v1: 0.9})])
    add("A1", A, [t("A1-t1", lv={v0: 0.9}), t("A1-t2", ok=True, lv={v0: 0.5, v1: 0.1})])
    add("A2", A, [t("A2-t1", lv={v0: 0.0}), t("A2-t2", lv={v0: 0.0}), t("A2-t3", lv={v0: 0.8})])
    add("A3", A, [t("A3-t1", lv={v0: 0.0}), t("A3-t2", lv={v0: 0.0}), t("A3-t3", lv={v0: 0.1})])
    add("A4", A, [t("A4-t1", lv={v0: 0.0}), t("A4-t2", lv={v0: 0.6})])
    add("A5", A, [t("A5-t1", lv={v0: 0.0}), t("A5-t2", lv={v0: 0.0}), t("A5-t3", lv={v0: 0.7})])
    add("A6", A, [t("A6-t1", ok=True, lv={v0: 5.0})], done=False)  # unfinished: never used
    # Problem B: nothing correct. B2 passed its public tests and failed the private ones at turn 1.
    add("B0", B, [t("B0-t1"), t("B0-t2"), t("B0-t3", lv={v0: 0.3})])
    add("B1", B, [t("B1-t1"), t("B1-t2"), t("B1-t3", lv={v0: 0.9})])
    add("B2", B, [t("B2-t1", public=True, lv={v0: 0.4})])
    # Problem C is on the test split: correct and highly scored, and must never appear.
    add("C0", C, [t("C0-t1", ok=True, lv={v0: 9.0})])
    add("C1", C, [t("C1-t1", lv={v0: 9.0}), t("C1-t2", lv={v0: 9.0})])
    # Problem D: Best-of-N turns; a non-chosen candidate is never a target, however well it scores.
    add("D0", D, [{"candidates": [
        {"response": "D0-t1-x", "public": False, "private": False, "scores": {v0: 0.99}},
        {"response": "D0-t1", "public": True, "private": True, "scores": {v0: 0.1}},
    ], "chosen": 1}])
    add("D1", D, [{"candidates": [
        {"response": "D1-t1", "public": False, "private": False, "scores": {v0: 0.5}},
        {"response": "D1-t1-x", "public": True, "private": True, "scores": {v0: 5.0}},
    ], "chosen": 0}])

    # Round 1 of the same experiment, scored by rm1.
    r1 = seed.add_round(store, "exp", 1, generator_id=g0)
    _set_round(store, r1, verifier_out_id=v1)
    add("E0", A, [t("E0-t1", ok=True, lv={v1: 0.3, v0: 9.0})], round_id=r1, index=0)
    add("E1", A, [t("E1-t1", lv={v1: 0.2}), t("E1-t2", lv={v1: 0.4})], round_id=r1, index=1)
    return {"store": store, "r0": r0, "r1": r1, "v0": v0, "v1": v1, "g0": g0, "ro": ro,
            "problems": {"A": A, "B": B, "C": C, "D": D}}


def _examples(world, ts_id):
    """{(rollout name, turn index): (target text, source)} of a training set."""
    names = {v: k for k, v in world["ro"].items()}
    out = {}
    for rec in example_records(world["store"], ts_id):
        key = (names[rec["rollout_id"]], rec["turn_index"])
        assert key not in out
        assert rec["messages"][-1]["role"] == "assistant"
        out[key] = (rec["messages"][-1]["content"], rec["source"])
    return out


def _expand(spec: dict[str, tuple[int, str, str]]) -> dict:
    """{rollout: (num_turns, target, source)} -> one expected example per turn state."""
    return {(r, k): (target, src) for r, (n, target, src) in spec.items() for k in range(1, n + 1)}


MUCODE_BOTH_R0 = {
    "A0": (1, "A0-t1", "positive"), "A1": (2, "A1-t2", "positive"),
    "A2": (3, "A1-t2", "relabeled"), "A5": (3, "A1-t2", "relabeled"), "A4": (2, "A1-t2", "relabeled"),
    "B1": (3, "B1-t3", "relabeled"), "B2": (1, "B1-t3", "relabeled"), "B0": (3, "B1-t3", "relabeled"),
    "D0": (1, "D0-t1", "positive"), "D1": (1, "D0-t1", "relabeled"),
}


def test_mucode_both_exact(world):
    store = world["store"]
    ts = build_training_set(store, world["r0"], method="mucode", aggregate_rounds=False)
    assert ts["created"]
    got = _examples(world, ts["id"])
    assert got == _expand(MUCODE_BOTH_R0)
    st = ts["stats"]
    assert st["examples"] == 20
    assert st["examples_by_source"] == {"positive": 4, "relabeled": 16}
    assert st["trajectories_kept"] == 10
    assert st["problems"] == 3 and st["problems_with_examples"] == 3
    assert st["problems_without_correct"] == 1
    assert st["problems_without_correct_list"] == [{"round_index": 0, "problem": "mbpp/602"}]
    assert st["expert_incorrect"] == 1
    assert st["excluded_non_train_rollouts"] == 2
    assert st["excluded_unfinished_rollouts"] == 1
    assert ts["config"]["rounds"] == [{"id": world["r0"], "index": 0, "verifier_id": world["v0"]}]
    # Idempotent: the same settings return the same set, untouched.
    again = build_training_set(store, world["r0"], method="mucode", aggregate_rounds=False)
    assert again["id"] == ts["id"] and not again["created"]
    rebuilt = build_training_set(store, world["r0"], method="mucode", aggregate_rounds=False, rebuild=True)
    assert rebuilt["id"] == ts["id"] and _examples(world, ts["id"]) == _expand(MUCODE_BOTH_R0)


def test_states_are_the_turn_histories_and_lineage(world):
    store = world["store"]
    ts = build_training_set(store, world["r0"], method="mucode", aggregate_rounds=False)
    with store.session() as s:
        prompts = {p.id: p for p in s.scalars(select(m.Problem))}
        a1_final = s.scalar(
            select(m.Candidate.id).join(m.Turn).where(m.Turn.rollout_id == world["ro"]["A1"], m.Turn.index == 2)
        )
    names = {v: k for k, v in world["ro"].items()}
    recs = list(example_records(store, ts["id"]))
    for rec in recs:
        assert rec["problem"] != "mbpp/11"
        assert rec["round_id"] == world["r0"] and rec["generator_id"] == world["g0"]
        assert rec["verifier_id"] == world["v0"] and rec["training_set_id"] == ts["id"]
    a2 = sorted((r for r in recs if names[r["rollout_id"]] == "A2"), key=lambda r: r["turn_index"])
    prompt = prompts[world["problems"]["A"]].prompt
    user = {"role": "user", "content": prompt}
    fb = {"role": "user", "content": "Feedback: AssertionError"}
    target = {"role": "assistant", "content": "A1-t2"}
    assert [r["messages"] for r in a2] == [
        [user, target],
        [user, {"role": "assistant", "content": "A2-t1"}, fb, target],
        [user, {"role": "assistant", "content": "A2-t1"}, fb, {"role": "assistant", "content": "A2-t2"}, fb,
         target],
    ]
    # Lineage of the relabeled target: the candidate, rollout and turn it came from.
    assert {(r["target_candidate_id"], r["target_rollout_id"], r["target_turn_index"], r["target_correct"])
            for r in a2} == {(a1_final, world["ro"]["A1"], 2, True)}


def test_mucode_oracle_and_learned(world):
    store = world["store"]
    oracle = build_training_set(store, world["r0"], method="mucode", expert="oracle", aggregate_rounds=False)
    # y* = the correct final response with the lowest candidate id (A0); failures tie at score 0, so the
    # relabeled ones are the three with the lowest final candidate ids (A2, A3, A4); B: B0, B1, B2 -> B0.
    assert _examples(world, oracle["id"]) == _expand({
        "A0": (1, "A0-t1", "positive"), "A1": (2, "A1-t2", "positive"),
        "A2": (3, "A0-t1", "relabeled"), "A3": (3, "A0-t1", "relabeled"), "A4": (2, "A0-t1", "relabeled"),
        "B0": (3, "B0-t3", "relabeled"), "B1": (3, "B0-t3", "relabeled"), "B2": (1, "B0-t3", "relabeled"),
        "D0": (1, "D0-t1", "positive"), "D1": (1, "D0-t1", "relabeled"),
    })
    assert oracle["config"]["rounds"][0]["verifier_id"] is None
    assert all(r["verifier_id"] is None for r in example_records(store, oracle["id"]))

    learned = build_training_set(store, world["r0"], method="mucode", expert="learned", aggregate_rounds=False)
    # LV only: y*(A) = A2-t3 (0.8), an incorrect response; y*(D) = D1-t1 (0.5).
    assert _examples(world, learned["id"]) == _expand({
        "A0": (1, "A0-t1", "positive"), "A1": (2, "A1-t2", "positive"),
        "A2": (3, "A2-t3", "relabeled"), "A5": (3, "A2-t3", "relabeled"), "A4": (2, "A2-t3", "relabeled"),
        "B1": (3, "B1-t3", "relabeled"), "B2": (1, "B1-t3", "relabeled"), "B0": (3, "B1-t3", "relabeled"),
        "D0": (1, "D0-t1", "positive"), "D1": (1, "D1-t1", "relabeled"),
    })
    assert learned["stats"]["expert_incorrect"] == 3  # A, B and D
    assert learned["stats"]["problems_without_correct"] == 1


def test_k_and_keep_successful(world):
    store = world["store"]
    ts = build_training_set(
        store, world["r0"], method="mucode", aggregate_rounds=False, relabel_failed=1, keep_successful=False
    )
    assert _examples(world, ts["id"]) == _expand({
        "A2": (3, "A1-t2", "relabeled"), "B1": (3, "B1-t3", "relabeled"), "D1": (1, "D0-t1", "relabeled"),
    })


def test_baselines(world):
    store = world["store"]
    multi = build_training_set(store, world["r0"], method="multi_rft", aggregate_rounds=False)
    assert _examples(world, multi["id"]) == _expand({
        "A0": (1, "A0-t1", "positive"), "A1": (2, "A1-t2", "positive"), "D0": (1, "D0-t1", "positive"),
    })
    assert multi["stats"]["examples_by_source"] == {"positive": 4}

    rft = build_training_set(store, world["r0"], method="rft", aggregate_rounds=False)
    assert _examples(world, rft["id"]) == {("A0", 1): ("A0-t1", "positive"), ("D0", 1): ("D0-t1", "positive")}

    lv = build_training_set(store, world["r0"], method="rft_lv", aggregate_rounds=False, top_k=3)
    assert _examples(world, lv["id"]) == _expand({
        "A2": (3, "A2-t3", "top_lv"), "A5": (3, "A5-t3", "top_lv"), "A4": (2, "A4-t2", "top_lv"),
        "B1": (3, "B1-t3", "top_lv"), "B2": (1, "B2-t1", "top_lv"), "B0": (3, "B0-t3", "top_lv"),
        "D1": (1, "D1-t1", "top_lv"), "D0": (1, "D0-t1", "top_lv"),
    })
    # Every method reads the train split only.
    for ts in (multi, rft, lv):
        assert all(r["problem"] != "mbpp/11" for r in example_records(store, ts["id"]))


def test_aggregation_keeps_each_round_with_its_own_verifier(world):
    store = world["store"]
    agg = build_training_set(store, world["r1"], method="mucode")  # aggregate_rounds defaults to True
    expected = _expand(MUCODE_BOTH_R0)
    expected.update(_expand({"E0": (1, "E0-t1", "positive"), "E1": (2, "E0-t1", "relabeled")}))
    assert _examples(world, agg["id"]) == expected
    assert agg["config"]["rounds"] == [
        {"id": world["r0"], "index": 0, "verifier_id": world["v0"]},
        {"id": world["r1"], "index": 1, "verifier_id": world["v1"]},
    ]
    by_round = {r["rollout_id"]: r["verifier_id"] for r in example_records(store, agg["id"])}
    assert by_round[world["ro"]["A2"]] == world["v0"] and by_round[world["ro"]["E1"]] == world["v1"]
    assert agg["stats"]["rounds"]["1"]["examples"] == 3 and agg["stats"]["rounds"]["0"]["examples"] == 20

    alone = build_training_set(store, world["r1"], method="mucode", aggregate_rounds=False)
    assert set(_examples(world, alone["id"])) == {("E0", 1), ("E1", 1), ("E1", 2)}
    # Round references: EXPERIMENT (latest round) and EXPERIMENT/INDEX.
    assert build_training_set(store, "exp", method="mucode")["id"] == agg["id"]
    assert build_training_set(store, "exp/1", method="mucode")["id"] == agg["id"]


def test_round_without_any_correct_response(store):
    v = seed.add_model(store, "rm", kind="verifier")
    rnd = seed.add_round(store, "hard", 0)
    _set_round(store, rnd, verifier_out_id=v)
    p = [seed.add_problem(store, f"mbpp/{700 + i}") for i in range(2)]
    ids = {}
    for i, (prob, scores) in enumerate([(p[0], (0.1, 0.7)), (p[0], (0.2, 0.4)), (p[1], (0.3, -1.0))]):
        ids[i] = seed.add_rollout(store, problem_id=prob, sample_index=i, round_id=rnd, turns=[
            t(f"x{i}-t1", lv={v: scores[0]}), t(f"x{i}-t2", lv={v: scores[1]}),
        ])
    ts = build_training_set(store, rnd, method="mucode")
    st = ts["stats"]
    assert st["problems_without_correct"] == 2 and st["expert_incorrect"] == 2
    assert [x["problem"] for x in st["problems_without_correct_list"]] == ["mbpp/700", "mbpp/701"]
    assert st["examples_by_source"] == {"relabeled": 6}
    got = {(r["rollout_id"], r["turn_index"]): r["messages"][-1]["content"] for r in example_records(store, ts["id"])}
    assert got == {
        (ids[0], 1): "x0-t2", (ids[0], 2): "x0-t2", (ids[1], 1): "x0-t2", (ids[1], 2): "x0-t2",
        (ids[2], 1): "x2-t2", (ids[2], 2): "x2-t2",
    }


def test_missing_scores_and_verifier(store):
    rnd = seed.add_round(store, "nov", 0)
    prob = seed.add_problem(store, "mbpp/800")
    seed.add_rollout(store, problem_id=prob, sample_index=0, round_id=rnd, turns=[t("ok", ok=True)])
    seed.add_rollout(store, problem_id=prob, sample_index=1, round_id=rnd, turns=[t("bad")])
    with pytest.raises(MucodeError, match="no verifier"):
        build_training_set(store, rnd, method="mucode")
    v = seed.add_model(store, "rm-late", kind="verifier")
    with pytest.raises(MucodeError, match="no score"):
        build_training_set(store, rnd, method="mucode", verifier_id=v)
    # The oracle variant and the RFT baselines need no verifier.
    ts = build_training_set(store, rnd, method="mucode", expert="oracle")
    assert ts["stats"]["examples_by_source"] == {"positive": 1, "relabeled": 1}
    assert build_training_set(store, rnd, method="multi_rft")["stats"]["examples"] == 1


def test_exports(world, tmp_path):
    store = world["store"]
    ts = build_training_set(store, world["r0"], method="mucode", aggregate_rounds=False)
    n = export_jsonl(store, ts["id"], tmp_path / "out" / "sft.jsonl")
    lines = (tmp_path / "out" / "sft.jsonl").read_text().splitlines()
    assert n == len(lines) == ts["stats"]["examples"]
    first = json.loads(lines[0])
    assert first["messages"][0]["role"] == "user" and first["messages"][-1]["role"] == "assistant"
    assert {"rollout_id", "round_id", "generator_id", "verifier_id", "target_candidate_id", "source"} <= set(first)
    ds = to_hf_dataset(store, ts["id"])
    assert len(ds) == n
    assert ds[0]["messages"] == first["messages"] and ds[0]["example_id"] == first["example_id"]
    assert sorted(set(ds["source"])) == ["positive", "relabeled"]


def test_cli_relabel(world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli.main import root
    from app.config import get_settings

    store = world["store"]
    monkeypatch.setenv("MUCODE_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        res = runner.invoke(root, ["relabel", "exp/0", "--method", "mucode", "--no-aggregate", "--json",
                                   "--export", str(tmp_path / "x.jsonl"), "--hf-dataset", str(tmp_path / "hf")])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["stats"]["examples"] == 20 and out["exported_jsonl"]["examples"] == 20
        assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 20
        from datasets import load_from_disk

        assert len(load_from_disk(str(tmp_path / "hf"))) == 20
        res = runner.invoke(root, ["relabel", "exp", "--expert", "oracle", "--k", "1"])
        assert res.exit_code == 0, res.output
        assert "examples" in res.output and "no correct response" in res.output
        res = runner.invoke(root, ["relabel", "nope"])
        assert res.exit_code != 0
    finally:
        get_settings.cache_clear()


def test_examples_come_back_in_content_order_whatever_their_ids(world):
    """The trainer reads a set in an order that depends on the store's content, not on the timing that gave the
    rows their ids: the same examples written in the opposite order read back identically."""
    store = world["store"]
    ts = build_training_set(store, world["r1"], method="mucode")

    def key(r: dict) -> tuple:
        return (r["round_id"], r["problem"], r["sample_index"], r["turn_index"], r["target_candidate_id"])

    first = [key(r) for r in example_records(store, ts["id"])]
    assert len(first) > 5
    cols = ("training_set_id", "problem_id", "rollout_id", "turn_index", "target_candidate_id", "source",
            "verifier_id")
    with store.session() as s:
        rows = s.scalars(select(m.SftExample).where(m.SftExample.training_set_id == ts["id"])
                         .order_by(m.SftExample.id)).all()
        copies = [{c: getattr(r, c) for c in cols} for r in rows]
        for r in rows:
            s.delete(r)
        s.flush()
        for c in reversed(copies):  # later content gets the smaller ids now
            s.add(m.SftExample(**c))
    again = [key(r) for r in example_records(store, ts["id"])]
    assert again == first
    rounds = {world["r0"]: 0, world["r1"]: 1}
    assert [(rounds[k[0]],) + k[1:4] for k in first] == sorted((rounds[k[0]],) + k[1:4] for k in first)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0)])
def test_equal_scores_pick_the_same_target_whatever_the_row_order(store, order):
    """Two rollouts that end in equally scored programs (the same code sampled twice): the expert is the one with
    the lower rollout index, however the rows happened to be inserted (after a resume, batches are sampled in
    another order and their rows get other ids). Same store content, same training set."""
    v = seed.add_model(store, "rm", kind="verifier")
    rnd = seed.add_round(store, "ties", 0)
    _set_round(store, rnd, verifier_out_id=v)
    p = seed.add_problem(store, "mbpp/710")
    for i in order:
        seed.add_rollout(store, problem_id=p, sample_index=i, round_id=rnd,
                         turns=[t(f"r{i}-t1", lv={v: 0.1}), t(f"r{i}-t2", lv={v: 0.5 if i < 2 else 0.2})])
    ts = build_training_set(store, rnd, method="mucode")
    targets = {r["messages"][-1]["content"] for r in example_records(store, ts["id"])}
    assert targets == {"r0-t2"}


def test_a_bad_relabel_setting_is_an_error_that_names_it():
    """An experiment whose frozen relabel settings hold an unknown field or a refused value is not built with
    other settings: the error names each bad field and its value."""
    from app.errors import ConfigError
    from trainers.relabel import relabel_config_of

    assert relabel_config_of(None).relabel_failed == 3
    assert relabel_config_of({"relabel": {"expert": "oracle"}}).expert == "oracle"
    with pytest.raises(ConfigError, match=r"relabel\.expert = 'best'"):
        relabel_config_of({"relabel": {"expert": "best"}})
    with pytest.raises(ConfigError, match=r"relabel\.relabel_failed = -1.*relabel\.k = 3"):
        relabel_config_of({"relabel": {"relabel_failed": -1, "k": 3}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        relabel_config_of({"relabel": ["both"]})
