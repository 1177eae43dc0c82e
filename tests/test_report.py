"""`mucode report`: Table 1 from the stored evaluation results, intervals checked independently.

The store is seeded with fixed chain outcomes (tests/helpers/report_seed.py) and finalized by the real
evaluation code path. Every cell must equal the evaluation's stored numbers and a by-hand computation from the
outcomes; its interval must equal a brute-force percentile bootstrap written here with numpy (same seed
convention: ``default_rng(seed)``, problems in id order); comparisons must pair only the shared problems.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from app import report as RP
from tests.helpers import report_seed as RS


def _bootstrap(values, seed=0, resamples=10_000, level=0.95):
    """An independent percentile bootstrap: resample problems with replacement, percentiles of the means."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(x.mean()), *(float(v) for v in np.percentile(means, [tail, 100 - tail]))


def _hand(exp, gen, dataset, mode, t):
    """{problem external id: score at turn t} from the seeded outcomes."""
    metric = "last_turn" if mode == "greedy" else "first_public"
    chains = RS.OUTCOMES[(exp, gen)][(dataset, mode)]
    return {ext: RS.per_problem(cs, t, metric) for ext, cs in chains.items()}


@pytest.fixture
def world(store):
    return store, RS.build(store)


def _report(store, names, **kw):
    return RP.build_report(store, RP.resolve_experiments(store, names), **kw)


def _cell(rep, exp, gen, dataset, mode):
    row = next(r for r in rep.rows if r.key.experiment == exp and r.key.generator == gen)
    col = next(c for c in row.cells if c.dataset == dataset and c.mode == mode)
    return row.cells[col], col


def test_cells_equal_the_stored_metrics_the_hand_count_and_an_independent_bootstrap(world):
    store, ids = world
    rep = _report(store, ["grp"], per_turn=True)  # the group's name stands for its two experiments
    assert rep.experiments == ["grp-mucode", "grp-multi_rft"]
    assert [(r.label, r.key.generator, r.key.verifier) for r in rep.rows] == [
        ("Instruct", "G0", "RM0"), ("µCode", "G1", "RM1"), ("RFT multi-turn", "G1", "RM1")]
    ext_of = {v: k for k, v in ids["problems"].items()}
    for (exp, gen, dataset, mode), ev_id in ids["evaluations"].items():
        cell, _col = _cell(rep, exp, gen, dataset, mode)
        assert cell.evaluation_id == ev_id
        stored = {r["turn"]: r["true_success"] for r in store.get_evaluation(ev_id).metrics["per_turn"]}
        for t in (1, 2, 3):
            hand = _hand(exp, gen, dataset, mode, t)
            iv = cell.intervals[t]
            assert iv.estimate == pytest.approx(stored[t], abs=1e-12)  # = `mucode eval` / `round status`
            assert iv.estimate == pytest.approx(np.mean(list(hand.values())), abs=1e-12)
            assert iv.n == len(hand)
            # problems in id order, as the store returns them
            values = [hand[ext_of[pid]] for pid in sorted(ids["problems"][e] for e in hand)]
            est, low, high = _bootstrap(values)
            assert (iv.estimate, iv.low, iv.high) == pytest.approx((est, low, high), abs=1e-12)
        assert {ext_of[p]: s for p, s in cell.scores.items()} == pytest.approx(_hand(exp, gen, dataset, mode, 3))
    # the greedy count is named: greedy on the last turn, Best-of-N at the first public pass
    cap = rep.caption()
    assert "greedy chains count at their last turn" in cap and "Best-of-N chains count at their first public" \
        in cap
    assert rep.problems == {"mbpp": 5, "humaneval": 3}
    assert any("bon-lv" in n and "running" not in n for n in rep.notes)  # the unfinished one is named


def test_a_cell_where_every_problem_scores_the_same_has_a_zero_width_interval(store):
    """By hand: every problem has 1 of its 2 chains solved, so every resample's mean is 0.5."""
    from tests.helpers import seed as S
    from workers.tasks.rounds import finalize_evaluation

    probs = [S.add_problem(store, f"mbpp/{40 + i}", split="test") for i in range(4)]
    gen = S.add_model(store, "g")
    rid = S.add_round(store, "flat", 0, generator_id=gen)
    ev = store.create_evaluation("flat/r0/G0/mbpp/bon", generator_id=gen, dataset="mbpp", split="test", mode="bon",
                                 selector="pt", num_candidates=2, num_chains=2, max_turns=2, round_id=rid)
    for i, pid in enumerate(probs):
        for c, chain in enumerate(["S", "FF"] if i % 2 else ["FX", "FS"]):
            S.add_rollout(store, problem_id=pid, sample_index=c, evaluation_id=ev, generator_id=gen,
                          turns=RS.chain_turns(chain, f"{pid}-{c}", None))
    finalize_evaluation(store, ev)
    rep = _report(store, ["flat"])
    (row,) = rep.rows
    (cell,) = row.cells.values()
    assert (cell.intervals[2].estimate, cell.intervals[2].low, cell.intervals[2].high) == (0.5, 0.5, 0.5)
    assert not rep.comparisons  # one experiment with one generator: nothing to compare


def test_paired_comparison_uses_only_the_shared_problems(world):
    store, ids = world
    rep = _report(store, ["grp-mucode", "grp-multi_rft"])
    (cmp,) = rep.comparisons  # default: the first experiment's last generator against the other's
    assert (cmp.a.key.experiment, cmp.a.key.generator) == ("grp-mucode", "G1")
    assert (cmp.b.key.experiment, cmp.b.key.generator) == ("grp-multi_rft", "G1")
    assert cmp.label == "µCode G1 − RFT multi-turn G1"
    for dataset, mode in (("mbpp", "greedy"), ("mbpp", "bon"), ("humaneval", "bon")):
        a = _hand("grp-mucode", "G1", dataset, mode, 3)
        b = _hand("grp-multi_rft", "G1", dataset, mode, 3)
        shared = sorted(set(a) & set(b), key=lambda e: ids["problems"][e])
        if dataset == "mbpp":
            assert len(shared) == 4 and RS.MBPP[4] not in shared and RS.MBPP[5] not in shared
        col = next(c for c in cmp.cells if c.dataset == dataset and c.mode == mode)
        d = cmp.cells[col]
        diffs = [a[e] - b[e] for e in shared]
        assert d.n == len(shared)
        assert (d.estimate, d.low, d.high) == pytest.approx(_bootstrap(diffs), abs=1e-12)
    # --compare picks rows explicitly: round against round within one experiment
    rep2 = _report(store, ["grp-mucode"], compare=[("grp-mucode:G1", "grp-mucode:G0")])
    (cmp2,) = rep2.comparisons
    col = next(c for c in cmp2.cells if c.dataset == "mbpp" and c.mode == "bon")
    a, b = _hand("grp-mucode", "G1", "mbpp", "bon", 3), _hand("grp-mucode", "G0", "mbpp", "bon", 3)
    assert cmp2.cells[col].estimate == pytest.approx(np.mean([a[e] - b[e] for e in a]))
    # one experiment: its last generator against its first, by default
    (auto,) = _report(store, ["grp-mucode"]).comparisons
    assert (auto.a.key.generator, auto.b.key.generator) == ("G1", "G0")
    assert not _report(store, ["grp"], auto_compare=False).comparisons


def test_metric_public_and_any(world):
    store, ids = world
    rep = _report(store, ["grp-mucode"], metric="any")
    cell, _ = _cell(rep, "grp-mucode", "G0", "mbpp", "bon")
    ev = store.get_evaluation(ids["evaluations"][("grp-mucode", "G0", "mbpp", "bon")])
    assert cell.intervals[3].estimate == pytest.approx(ev.metrics["any_success"])
    rep = _report(store, ["grp-mucode"], metric="public")
    cell, _ = _cell(rep, "grp-mucode", "G0", "mbpp", "bon")
    assert cell.intervals[3].estimate == pytest.approx(ev.metrics["public_success"])


def test_errors_name_the_problem(world):
    from app.errors import ConfigError, NotFound

    store, _ = world
    with pytest.raises(NotFound, match="no experiment or experiment group named 'nope'"):
        RP.resolve_experiments(store, ["nope"])
    with pytest.raises(ConfigError, match="unknown metric"):
        _report(store, ["grp"], metric="pass@k")
    with pytest.raises(NotFound, match="no such row"):
        _report(store, ["grp"], compare=[("grp-mucode:G7", "grp-multi_rft")])


@pytest.fixture
def cli(world, monkeypatch):
    from typer.testing import CliRunner

    from app.cli.main import root
    from app.config import get_settings

    store, ids = world
    monkeypatch.setenv("MUCODE_DATABASE_URL", store.engine.url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args):
        res = runner.invoke(root, list(args))
        assert res.exit_code == 0, res.output
        return res.stdout

    yield run, store, ids
    get_settings.cache_clear()


def test_every_format_parses_and_carries_the_cells(cli, tmp_path):
    run, store, ids = cli
    ev = store.get_evaluation(ids["evaluations"][("grp-mucode", "G1", "mbpp", "bon")])
    est = ev.metrics["true_success"]
    pct = f"{100 * est:.1f}"

    doc = json.loads(run("report", "grp", "--format", "json"))
    cell = next(c for c in doc["cells"] if c["evaluation_id"] == ev.id)
    assert cell["estimate"] == pytest.approx(est) and cell["low"] <= est <= cell["high"] and cell["n"] == 5
    assert len(doc["cells"]) == 12 and len(doc["comparisons"]) == 4
    assert doc["comparisons"][0]["other_experiment"] == "grp-multi_rft"

    rows = list(csv.DictReader(io.StringIO(run("report", "grp", "--format", "csv", "--per-turn"))))
    mine = [r for r in rows if r["evaluation_id"] == str(ev.id)]
    assert [r["turn"] for r in mine] == ["1", "2", "3"]
    stored = {r["turn"]: r["true_success"] for r in ev.metrics["per_turn"]}
    assert [float(r["estimate"]) for r in mine] == pytest.approx([stored[t] for t in (1, 2, 3)])
    assert {r["kind"] for r in rows} == {"cell", "difference"}

    md = run("report", "grp", "--format", "markdown")
    lines = md.splitlines()
    assert lines[0].startswith("| method | gen. | verifier | mbpp greedy | mbpp BoN N=2 pt+lv")
    mu = next(ln for ln in lines if ln.startswith("| µCode | G1 |"))
    assert f" {pct} [" in mu and any(ln.startswith("| Δ µCode G1 − RFT multi-turn G1") for ln in lines)
    assert "last turn" in md

    tex = run("report", "grp", "--format", "latex")
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"$\mu$Code" in tex
    assert f"{pct} {{\\scriptsize [" in tex and tex.count(r"\\") >= 5
    assert r"\multicolumn{2}{c}{mbpp}" in tex

    table = run("report", "grp")
    assert "µCode" in table and pct in table and "Instruct" in table

    out = tmp_path / "t1.md"
    run("report", "grp", "--format", "markdown", "--out", str(out))
    assert out.read_text() == md


def test_cli_errors(cli):
    from typer.testing import CliRunner

    from app.cli.main import root

    _, _, _ = cli
    res = CliRunner().invoke(root, ["report", "grp", "--format", "xml"])
    assert res.exit_code != 0 and "unknown --format" in str(res.exception)
    res = CliRunner().invoke(root, ["report", "nope"])
    assert res.exit_code != 0 and "nope" in str(res.exception)


def test_batched_intervals_equal_one_by_one_intervals():
    """The report computes all cells at once (app.stats.bootstrap_cis): the same intervals as bootstrap_ci."""
    from app.stats import bootstrap_ci, bootstrap_cis

    rng = np.random.default_rng(3)
    samples = [(rng.random(50) < p).astype(float).tolist() for p in (0.2, 0.5, 0.9)]
    samples += [(np.round(rng.random(17) * 10) / 10).tolist(), [], [1.0]]
    for one, batched in zip([bootstrap_ci(s, seed=4) for s in samples], bootstrap_cis(samples, seed=4),
                            strict=True):
        assert batched.n == one.n
        if one.n:
            assert (batched.estimate, batched.low, batched.high) == pytest.approx(
                (one.estimate, one.low, one.high), abs=1e-12)


def test_group_create_makes_one_experiment_per_method_with_one_protocol(cli):
    from app.protocol import ExperimentConfig
    from app.store.report import GROUP_METHODS

    run, store, _ = cli
    out = json.loads(run("experiment", "group", "create", "paper", "--base-model", "org/tiny", "--json"))
    assert [e["name"] for e in out["experiments"]] == [f"paper-{m}" for m in GROUP_METHODS]
    members = store.report_group_members("paper")
    assert [e.method for e in members] == list(GROUP_METHODS)
    cfgs = [ExperimentConfig.frozen(e.config).model_dump() for e in members]
    # the same protocol, except the method and that only the first member evaluates the base model
    for c in cfgs:
        c.pop("method")
        assert c["eval"].pop("baseline") is (c is cfgs[0])
    assert all(c == cfgs[0] for c in cfgs)
    # idempotent: the same command again changes nothing
    again = json.loads(run("experiment", "group", "create", "paper", "--base-model", "org/tiny", "--json"))
    assert [e["created"] for e in again["experiments"]] == [False] * 4
    assert "paper-rft_lv" in run("experiment", "group", "show", "paper")
    assert "no finished evaluation" in run("report", "paper")  # created, not run yet


def test_headers_tell_apart_columns_that_differ_only_in_chains_or_count():
    cols = [RP.Column("mbpp", "test", "bon", "pt+lv", 5, c, 3, "first_public") for c in (5, 10)]
    cols += [RP.Column("mbpp", "test", "greedy", None, 1, 1, 3, m) for m in ("first_public", "last_turn")]
    cols.append(RP.Column("humaneval", "test", "bon", "pt+lv", 5, 10, 3, "first_public"))
    rep = RP.Report(["e"], "true", False, 0.95, 100, 0, cols, [], [], {}, [])
    assert [rep.search_label(c) for c in cols] == [
        "BoN N=5 pt+lv C=5", "BoN N=5 pt+lv C=10", "greedy first public pass", "greedy last turn", "BoN N=5 pt+lv"]
    assert len({c.label for c in cols}) == len(cols)


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_a_group_run_round_by_round_gives_table_1(tmp_path):
    """End to end in embedded mode with the tiny model that knows some answers: create a group (µCode and
    multi-turn RFT), run round 0 and the final round of both, and the report shows the Instruct row once, each
    method's G1 searched with its RM1, and their paired difference; every cell equals its stored number."""
    from app.store import Store
    from tests.helpers.rounds import knowing_model_path
    from tests.test_rounds import P_TEST, P_TRAIN, _env, _mucode, small_config

    model = str(knowing_model_path(P_TRAIN, P_TEST))
    db = f"sqlite:///{tmp_path / 'g.db'}"
    env = _env(tmp_path, db)
    _mucode(["db", "upgrade"], env)
    _mucode(["data", "load", "mbpp"], env)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(small_config(model)))
    _mucode(["experiment", "group", "create", "paper", "--config", str(cfg), "--method", "mucode",
             "--method", "multi_rft"], env)
    _mucode(["experiment", "group", "run", "paper"], env)
    _mucode(["experiment", "group", "run", "paper", "--final"], env)
    doc = json.loads(_mucode(["report", "paper", "--format", "json"], env).stdout)
    store = Store(db)
    evs = [e for name in ("paper-mucode", "paper-multi_rft")
           for e in store.experiment_evaluations(store.get_experiment(name).id)]
    assert len(evs) == 6 and all(e.status == "done" for e in evs)  # G0 once; G1 of each; greedy and BoN
    assert len(doc["cells"]) == 6
    for c in doc["cells"]:
        ev = store.get_evaluation(c["evaluation_id"])
        assert c["estimate"] == pytest.approx(ev.metrics["true_success"]) and c["n"] == P_TEST
    assert {(c["row"], c["generator"], c["verifier"]) for c in doc["cells"]} == {
        ("Instruct", "G0", "RM0"), ("µCode", "G1", "RM1"), ("RFT multi-turn", "G1", "RM1")}
    assert len(doc["comparisons"]) == 2 and {c["other_experiment"] for c in doc["comparisons"]} == {
        "paper-multi_rft"}
    assert all(c["n"] == P_TEST for c in doc["comparisons"])
    store.dispose()
