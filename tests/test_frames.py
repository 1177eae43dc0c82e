"""app.frames and `mucode export`: an experiment's tables as DataFrames and files, on the seeded report store."""

from __future__ import annotations

import pytest

from app import frames
from tests.helpers import report_seed as RS

pd = pytest.importorskip("pandas")


@pytest.fixture
def world(store):
    return store, RS.build(store)


def _expected(exp):
    """Counts from the seed: rollouts, executed turns (eval chains, training), candidates."""
    chains = [c for (e, _), evs in RS.OUTCOMES.items() if e == exp for cs in evs.values() for v in cs.values()
              for c in v]
    train = [c for _, c in RS.TRAIN] if exp == "grp-mucode" else []
    eval_turns = sum(len(c) for c in chains)
    turns = eval_turns + sum(len(c) for c in train)
    return {"rollouts": len(chains) + len(train), "turns": turns, "candidates": 2 * turns,
            "eval_turns": eval_turns, "evaluations": len([1 for (e, _), evs in RS.OUTCOMES.items() if e == exp
                                                          for _ in evs])}


def test_frames_have_the_experiments_rows(world):
    store, ids = world
    want = _expected("grp-mucode")
    t = frames.load_all("grp-mucode", store=store)
    assert set(t) == set(frames.FRAME_TABLES)
    assert len(t["rollouts"]) == want["rollouts"]
    assert len(t["turns"]) == want["turns"]
    assert len(t["candidates"]) == want["candidates"]
    assert len(t["verifier_scores"]) == want["candidates"]  # every seeded candidate is scored
    assert len(t["executions"]) == 2 * want["candidates"]  # unique code: a public and a private run each
    assert len(t["evaluations"]) == want["evaluations"] == 8
    assert len(t["evaluation_results"]) == want["eval_turns"]
    # training rollouts and evaluation chains, told apart by their owner
    ro = t["rollouts"]
    assert sorted(ro.loc[ro.round_id.notna() & ro.evaluation_id.isna(), "rollout_id"]) == ids["train_rollouts"]
    assert set(ro.dataset) == {"mbpp", "humaneval"}
    # ids join: every candidate's turn and rollout are in the frames, chosen picks are one per turn
    c = t["candidates"]
    assert set(c.turn_id) <= set(t["turns"].turn_id) and set(c.rollout_id) <= set(ro.rollout_id)
    assert (c.groupby("turn_id").chosen.sum() == 1).all()
    assert c.public_passed.dtype == "boolean" and "response" in c.columns
    # evaluation results agree with the stored metrics
    er, ev = t["evaluation_results"], t["evaluations"]
    bon = ids["evaluations"][("grp-mucode", "G1", "mbpp", "bon")]
    solved = er[(er.evaluation_id == bon) & (er.turn == er.groupby(["evaluation_id", "problem_id",
                                                                      "chain_index"]).turn.transform("max"))]
    assert solved.solved.mean() == pytest.approx(store.get_evaluation(bon).metrics["true_success"])
    assert set(ev.evaluation_id) == {v for (e, *_), v in ids["evaluations"].items() if e == "grp-mucode"}
    # scoped to the experiment: nothing of the other one
    other = frames.rollouts("grp-multi_rft", store=store)
    assert not set(other.rollout_id) & set(ro.rollout_id)
    assert len(other) == _expected("grp-multi_rft")["rollouts"]
    # without text: the long columns are left out
    lean = frames.candidates("grp-mucode", store=store, text=False)
    assert "response" not in lean.columns and len(lean) == len(c)


def test_parquet_and_csv_exports_read_back_equal(world, tmp_path):
    store, _ = world
    loaded = frames.load_all("grp-mucode", store=store)
    written = frames.export("grp-mucode", tmp_path / "pq", fmt="parquet", store=store)
    assert set(written) == set(frames.FRAME_TABLES)
    for table, (path, n) in written.items():
        back = pd.read_parquet(path)
        assert n == len(loaded[table])
        pd.testing.assert_frame_equal(back, loaded[table])
    written = frames.export("grp-mucode", tmp_path / "csv", fmt="csv", tables=["candidates"], store=store)
    back = pd.read_csv(written["candidates"][0])
    assert list(back.columns) == list(loaded["candidates"].columns) and len(back) == len(loaded["candidates"])
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["candidates.csv"]  # no temporary file left


def test_bad_input_is_named(world, tmp_path):
    from app.errors import ConfigError, NotFound

    store, _ = world
    with pytest.raises(ConfigError, match="unknown export format"):
        frames.export("grp-mucode", tmp_path, fmt="xlsx", store=store)
    with pytest.raises(ConfigError, match="unknown table"):
        frames.load("grp-mucode", "jobs", store=store)
    with pytest.raises(NotFound):
        frames.export("nope", tmp_path / "x", store=store)
    assert not (tmp_path / "x").exists()  # nothing written for a missing experiment


def test_cli_export(world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli.main import root
    from app.config import get_settings

    store, _ = world
    monkeypatch.setenv("MUCODE_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(root, ["export", "grp-multi_rft", "--out", str(tmp_path), "--format", "parquet"])
        assert res.exit_code == 0, res.output
        assert "evaluation_results" in res.output
        assert len(pd.read_parquet(tmp_path / "rollouts.parquet")) == _expected("grp-multi_rft")["rollouts"]
    finally:
        get_settings.cache_clear()
