"""Verifier data from the store: labels, split hygiene, seeded and stored BT pairs, BCE rows, idempotent scoring."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db import models as m
from app.errors import MucodeError
from tests.helpers import seed
from trainers.verifier.config import VerifierTrainingConfig
from trainers.verifier.data import build_training_set, draw_pairs, encode, load_bt_examples, split_holdout

TRAIN = [f"mbpp/{601 + i}" for i in range(10)] + ["mbpp_sanitized/700"]
# (external id, dataset, split): problems that must never reach a verifier training set
FORBIDDEN = [
    ("mbpp/11", "mbpp", "test"),
    ("mbpp/511", "mbpp", "validation"),
    ("mbpp/3", "mbpp", "prompt"),
    ("HumanEval/0", "humaneval", "test"),
    ("MbppPlus/602", "mbpp_plus", "train"),  # MBPP+ inherits MBPP's split but is evaluation data
]


def _t(tag: str, ok: bool, private: bool | None = None) -> dict:
    return {"response": f"{tag}/{'good' if ok else 'bad'}", "public": ok, "private": ok if private is None else private}


def seed_mixed(store) -> dict:
    """Two rounds with rollouts on train AND forbidden problems, an evaluation, an unfinished rollout."""
    gen = seed.add_model(store, "gen")
    pids = {}
    for ext in TRAIN:
        ds = ext.split("/")[0]
        pids[ext] = seed.add_problem(store, ext, dataset=ds, split="train")
    for ext, ds, split in FORBIDDEN:
        pids[ext] = seed.add_problem(store, ext, dataset=ds, split=split)
    r0 = seed.add_round(store, "exp", 0, generator_id=gen)
    r1 = seed.add_round(store, "exp", 1, generator_id=gen)
    for ext, pid in pids.items():
        for rid, ri in ((r0, 0), (r1, 1)):
            tag = f"{ext}/r{ri}"
            if ext == "mbpp/602":  # always solved: one class only, no pair
                specs = [[_t(f"{tag}/s0/t1", True)], [_t(f"{tag}/s1/t1", True)]]
            elif ext == "mbpp/603":  # never solved: one class only, no pair
                specs = [[_t(f"{tag}/s0/t{t}", False) for t in (1, 2, 3)]]
            else:
                specs = [
                    [_t(f"{tag}/s0/t1", False), _t(f"{tag}/s0/t2", False), _t(f"{tag}/s0/t3", True)],
                    [_t(f"{tag}/s1/t1", False), _t(f"{tag}/s1/t2", True)],
                    [_t(f"{tag}/s2/t1", False), _t(f"{tag}/s2/t2", False), _t(f"{tag}/s2/t3", False)],
                ]
            for s, turns in enumerate(specs):
                seed.add_rollout(store, problem_id=pid, sample_index=s, turns=turns, round_id=rid, generator_id=gen)
    # an unfinished rollout of a train problem: its turns are not labelled yet
    seed.add_rollout(store, problem_id=pids["mbpp/604"], sample_index=9, round_id=r0, done=False,
                     turns=[_t("mbpp/604/r0/s9/t1", True)])
    # an intermediate turn whose candidate (oddly) passed private tests: still a failure for the verifier
    seed.add_rollout(store, problem_id=pids["mbpp/605"], sample_index=8, round_id=r0,
                     turns=[_t("mbpp/605/r0/s8/t1", False, private=True), _t("mbpp/605/r0/s8/t2", True)])
    # evaluation rollouts (MBPP test and a train problem): never training data
    with store.session() as s:
        ev = m.Evaluation(name="ev", generator_id=gen, dataset="mbpp", split="test", mode="bon", selector="pt+lv",
                          num_candidates=2, num_chains=1)
        s.add(ev)
        s.flush()
        eid = ev.id
    for ext in ("mbpp/11", "mbpp/601"):
        seed.add_rollout(store, problem_id=pids[ext], sample_index=0, evaluation_id=eid, generator_id=gen,
                         turns=[{"candidates": [_t(f"{ext}/ev/c0", True), _t(f"{ext}/ev/c1", False)], "chosen": 0}])
    return {"pids": pids, "rounds": [r0, r1], "evaluation_id": eid, "generator_id": gen}


def _responses(store, cids) -> dict[int, str]:
    with store.session() as s:
        return dict(s.execute(select(m.Candidate.id, m.Candidate.response).where(m.Candidate.id.in_(list(cids)))).all())


def _ext_of(response: str) -> str:
    return "/".join(response.split("/")[:2])


def test_training_rows_labels_and_split_hygiene(store):
    w = seed_mixed(store)
    rows = store.verifier_training_rows(w["rounds"])
    resp = _responses(store, [r["candidate_id"] for r in rows])
    exts = {_ext_of(resp[r["candidate_id"]]) for r in rows}
    assert exts == set(TRAIN)  # every train problem, nothing else
    assert not exts & {f[0] for f in FORBIDDEN}
    for r in rows:
        text = resp[r["candidate_id"]]
        assert "/ev/" not in text  # evaluation rollouts never
        assert "/s9/" not in text  # unfinished rollouts never
        if r["is_final"]:
            assert r["label"] == text.endswith("good")
        else:
            assert r["label"] is False  # intermediate turns are failures
    odd = [r for r in rows if resp[r["candidate_id"]] == "mbpp/605/r0/s8/t1/bad"]
    assert len(odd) == 1 and odd[0]["label"] is False and not odd[0]["is_final"]
    # 3 + 2 + 3 turns per round for a normal problem, times two rounds
    assert sum(1 for r in rows if r["external_id"] == "mbpp/601") == 16
    # restricted to some problems, and with a verifier's scores (None: not scored)
    sub = store.verifier_training_rows(w["rounds"], problem_ids=[w["pids"]["mbpp/601"], w["pids"]["mbpp/11"]],
                                       verifier_id=None)
    assert {r["external_id"] for r in sub} == {"mbpp/601"}


def test_bt_training_set_pairs_are_train_only_seeded_and_stored(store):
    w = seed_mixed(store)
    cfg = VerifierTrainingConfig(pairs_per_problem=32, holdout_fraction=0.2, seed=7)
    ts_id = build_training_set(store, w["rounds"], cfg)
    ts = store.get_verifier_training_set(ts_id)
    assert ts["kind"] == "bt" and ts["config"]["round_ids"] == sorted(w["rounds"])
    holdout = set(ts["config"]["holdout_problem_ids"])
    assert len(holdout) == round(0.2 * len(TRAIN))
    assert holdout <= {w["pids"][e] for e in TRAIN}
    pairs = store.verifier_pairs(ts_id)
    resp = _responses(store, {p["chosen_candidate_id"] for p in pairs} | {p["rejected_candidate_id"] for p in pairs})
    by_problem: dict[int, list] = {}
    for p in pairs:
        c, r = resp[p["chosen_candidate_id"]], resp[p["rejected_candidate_id"]]
        assert c.endswith("good") and r.endswith("bad")
        assert "/t1/" not in c or c.startswith("mbpp/602")  # a correct first turn exists only for 602
        assert _ext_of(c) == _ext_of(r)  # same problem
        assert w["pids"][_ext_of(c)] == p["problem_id"]
        by_problem.setdefault(p["problem_id"], []).append(p)
    expected = {w["pids"][e] for e in TRAIN if e not in ("mbpp/602", "mbpp/603")} - holdout
    assert set(by_problem) == expected  # both classes only, held-out problems excluded
    # 32 pairs from each of the two rounds (the default per-round draw), indexed on across the rounds
    assert all(sorted(q["pair_index"] for q in v) == list(range(64)) for v in by_problem.values())
    assert ts["stats"]["pairs"] == 2 * 32 * len(expected) == len(pairs)
    # intermediate responses do appear as rejected ones
    assert any("/t1/" in resp[p["rejected_candidate_id"]] for p in pairs)
    assert store.verifier_training_set_leaks(ts_id) == []
    # idempotent: the same rounds and config find the same set, untouched
    assert build_training_set(store, w["rounds"], cfg) == ts_id
    assert store.verifier_pairs(ts_id) == pairs
    # a different seed draws other pairs
    other = build_training_set(store, w["rounds"], VerifierTrainingConfig(holdout_fraction=0.2, seed=8))
    assert other != ts_id
    examples = load_bt_examples(store, ts_id)
    assert len(examples) == len(pairs)
    assert all(e.prompt == f"Write a function f for {_ext_of(e.chosen)}." for e in examples)


def test_pairs_repeat_exactly_on_another_database(sqlite_store, pg_store):
    """Same data, different databases (different ids): the same pairs, by content."""
    drawn = []
    for shift, st in enumerate((sqlite_store, pg_store)):
        for i in range(shift + 1):  # problems without rollouts shift every id on one side
            seed.add_problem(st, f"mbpp/pad{i}", split="train")
        w = seed_mixed(st)
        ts_id = build_training_set(st, w["rounds"], VerifierTrainingConfig(holdout_fraction=0.2))
        pairs = st.verifier_pairs(ts_id)
        resp = _responses(st, {p["chosen_candidate_id"] for p in pairs} | {p["rejected_candidate_id"] for p in pairs})
        drawn.append(sorted((resp[p["chosen_candidate_id"]], resp[p["rejected_candidate_id"]], p["pair_index"])
                            for p in pairs))
    assert drawn[0] == drawn[1]


def test_bce_rows_are_train_only_and_labelled(store):
    w = seed_mixed(store)
    ts_id = build_training_set(store, w["rounds"], VerifierTrainingConfig(loss="bce", holdout_fraction=0.0))
    ts = store.get_verifier_training_set(ts_id)
    assert ts["kind"] == "bce" and store.verifier_pairs(ts_id) == []
    rows = ts["config"]["rows"]
    resp = _responses(store, [c for c, _ in rows])
    assert {_ext_of(resp[c]) for c, _ in rows} == set(TRAIN)  # one-class problems count for BCE
    assert all(lab == int(resp[c].endswith("good") and (resp[c] != "mbpp/605/r0/s8/t1/bad")) for c, lab in rows)
    assert store.verifier_training_set_leaks(ts_id) == []


def test_contaminated_training_set_is_refused(store, tmp_path):
    """A set that somehow names a test-split candidate is caught before any model is loaded."""
    from trainers.verifier.train import train_verifier

    w = seed_mixed(store)
    with store.session() as s:
        rows = s.execute(
            select(m.Candidate.id, m.Candidate.response, m.Rollout.problem_id)
            .join(m.Turn, m.Turn.id == m.Candidate.turn_id)
            .join(m.Rollout, m.Rollout.id == m.Turn.rollout_id)
        ).all()
    by_resp = {r: (c, p) for c, r, p in rows}
    test_good, test_pid = by_resp["mbpp/11/r0/s0/t3/good"]
    test_bad, _ = by_resp["mbpp/11/r0/s0/t1/bad"]
    train_bad, train_pid = by_resp["mbpp/601/r0/s0/t1/bad"]
    ts_id, created = store.create_verifier_training_set(
        name="contaminated", kind="bt", config={"round_ids": w["rounds"]}, stats={},
        pairs=[
            {"problem_id": train_pid, "pair_index": 0, "chosen_candidate_id": test_good,
             "rejected_candidate_id": train_bad},  # a test candidate filed under a train problem
            {"problem_id": test_pid, "pair_index": 0, "chosen_candidate_id": test_good,
             "rejected_candidate_id": test_bad},
        ],
    )
    assert created
    assert set(store.verifier_training_set_leaks(ts_id)) == {test_good, test_bad}
    with pytest.raises(MucodeError, match="refusing to train"):
        train_verifier(store, training_set_id=ts_id, base_model=str(tmp_path / "never-loaded"),
                       config=VerifierTrainingConfig(), progress=False)


def test_no_pairs_is_a_clear_error(store):
    seed.add_problem(store, "mbpp/11", split="test")
    pid = seed.add_problem(store, "mbpp/601", split="train")
    r = seed.add_round(store)
    seed.add_rollout(store, problem_id=pid, sample_index=0, round_id=r, turns=[_t("a", True)])
    with pytest.raises(MucodeError, match="both a correct and an incorrect"):
        build_training_set(store, [r], VerifierTrainingConfig(holdout_fraction=0.0))


def test_split_holdout_and_draw_pairs_pure():
    keys = {i: f"mbpp/{600 + i}" for i in range(1, 41)}
    h = split_holdout(keys, 0.1, seed=0)
    assert len(h) == 4 and h == split_holdout(dict(reversed(list(keys.items()))), 0.1, seed=0)
    assert h != split_holdout(keys, 0.1, seed=1)
    assert split_holdout(keys, 0.0, seed=0) == set()
    rows = [{"candidate_id": i, "problem_id": 1, "external_id": "mbpp/601", "label": i < 2} for i in range(6)]
    pairs, stats = draw_pairs(rows, 32, seed=0)
    assert len(pairs) == 32 and stats["problems_with_pairs"] == 1
    assert all(p["chosen_candidate_id"] < 2 <= p["rejected_candidate_id"] for p in pairs)
    assert pairs == draw_pairs(list(rows), 32, seed=0)[0]
    assert len({(p["chosen_candidate_id"], p["rejected_candidate_id"]) for p in pairs}) > 4  # with replacement


def test_encode_is_first_prompt_and_response_only(tmp_path_factory):
    from app.tiny_model import build_tiny_model
    from trainers.verifier.model import load_tokenizer

    tok = load_tokenizer(str(build_tiny_model(tmp_path_factory.getbasetemp() / "tiny")))
    ids = encode(tok, "Write f.", "def f(): return 1")
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\nWrite f.<|im_end|>") and "assistant\ndef f(): return 1" in text
    assert ids[-1] == tok.eos_token_id  # the score is read at the end-of-turn token
    assert tok.pad_token_id not in ids and tok.pad_token_id != tok.eos_token_id


# ------------------------------------------------------------------------------------------------ scoring
@pytest.fixture(scope="module")
def tiny_verifier_dir(tmp_path_factory):
    """An (untrained) verifier folder built from the tiny model through the normal save path."""
    from app.tiny_model import build_tiny_model
    from trainers.verifier.model import load_model_for_training, load_tokenizer, save_verifier

    base = str(build_tiny_model(tmp_path_factory.getbasetemp() / "tiny"))
    tok = load_tokenizer(base)
    model = load_model_for_training(base, tok, VerifierTrainingConfig())
    return str(save_verifier(model, tok, tmp_path_factory.mktemp("v") / "tiny-verifier", {"test": True}))


def test_scoring_is_batched_idempotent_and_resumable(store, tiny_verifier_dir, monkeypatch):
    from trainers.verifier.scorer import VerifierScorer, clear_scorer
    from workers.tasks.score import score_candidates

    w = seed_mixed(store)
    r0, r1 = w["rounds"]
    vid = store.add_verifier_version(name="v-tiny", base_model="tiny", uri=tiny_verifier_dir,
                                     config={"max_length": 512})
    with store.session() as s:
        n_r0 = len(s.execute(select(m.Candidate.id).join(m.Turn).join(m.Rollout)
                             .where(m.Rollout.round_id == r0)).all())
    clear_scorer()
    stats: dict = {}
    assert score_candidates(store, vid, round_id=r0, batch_size=7, chunk_size=50, stats=stats) == n_r0
    assert stats["todo"] == n_r0 and stats["candidates_per_s"] > 0
    first = store.verifier_scores(vid)
    assert len(first) == n_r0
    # twice: nothing new, nothing changed, and nothing loaded for nothing
    assert score_candidates(store, vid, round_id=r0) == 0
    assert store.verifier_scores(vid) == first
    # explicit ids: only the unscored ones are written
    some = sorted(first)[:3]
    assert score_candidates(store, vid, candidate_ids=some) == 0
    assert score_candidates(store, vid, candidate_ids=[]) == 0
    # padding-invariant: a candidate scored alone gets the score it got in a batch
    scorer = VerifierScorer.load(tiny_verifier_dir, max_length=512)
    texts = store.verifier_candidate_texts(some)
    alone = [scorer.score([texts[c]])[0] for c in some]
    assert alone == pytest.approx([first[c] for c in some], abs=1e-4)
    # the Celery task, run in-process through dispatch, follows its `then`
    monkeypatch.setenv("MUCODE_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    monkeypatch.delenv("MUCODE_BROKER_URL", raising=False)
    from app.config import get_settings

    get_settings.cache_clear()
    try:
        from workers.dispatch import submit

        submit("mucode.score", verifier_id=vid, evaluation_id=w["evaluation_id"],
               then={"task": "mucode.score", "kwargs": {"verifier_id": vid, "round_id": r1}})
    finally:
        get_settings.cache_clear()
    assert store.unscored_candidate_ids(vid, round_id=r1) == []
    assert store.unscored_candidate_ids(vid, evaluation_id=w["evaluation_id"]) == []
    assert store.unscored_candidate_ids(vid, all_candidates=True) == []
    total = store.count_verifier_scores(vid)
    assert score_candidates(store, vid, all_candidates=True) == 0
    assert store.count_verifier_scores(vid) == total
    with pytest.raises(ValueError, match="say which candidates"):
        store.unscored_candidate_ids(vid)
    clear_scorer()


def test_verifier_registration_by_name(store):
    vid = store.add_verifier_version(name="v", base_model="b", uri="/a", config={"loss": "bt"})
    # registered again (a retrain after an incomplete save): same row, new location and config
    assert store.add_verifier_version(name="v", base_model="b", uri="/b", config={"loss": "bce"},
                                      metrics={"train": {"steps": 3}}) == vid
    v = store.get_verifier("v")
    assert v["id"] == vid and v["uri"] == "/b" and v["config"]["loss"] == "bce"
    assert store.get_verifier(str(vid))["name"] == "v" and store.get_verifier(vid)["name"] == "v"
    merged = store.set_verifier_metrics(vid, {"eval": {"holdout": None}})
    assert merged == {"train": {"steps": 3}, "eval": {"holdout": None}}
    seed.add_model(store, "g", kind="generator")
    with pytest.raises(MucodeError, match="not a verifier"):
        store.add_verifier_version(name="g", base_model="b", uri="/c", config={})
    assert store.get_verifier("g", required=False) is None
    assert [r["name"] for r in store.list_verifiers()] == ["v"]
