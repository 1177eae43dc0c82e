"""The dashboard: its store queries on SQLite and Postgres, and every page through streamlit.testing on a
seeded store (tests/helpers/dashboard_seed.py works out every number asserted here)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest

from tests.helpers.dashboard_seed import (
    COMPARE_EXPECTED,
    COMPARE_FIRST_TURN,
    EXPECTED,
    seed_comparison,
    seed_dashboard,
)

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "home.py")
PAGES = ("views/overview.py", "views/trajectories.py", "views/failures.py", "views/rankings.py",
         "views/compare.py")


# -- fixtures -------------------------------------------------------------------------------------------
def _seeded(url: str, *, comparison: bool = False):
    from app.store import Store

    store = Store(url)
    store.upgrade()
    ids = seed_dashboard(store)
    if comparison:
        ids["rft"] = seed_comparison(store, ids)
    store.dispose()
    return url, ids


@pytest.fixture(scope="module")
def seeded_sqlite(tmp_path_factory):
    return _seeded(f"sqlite:///{tmp_path_factory.mktemp('dash') / 'seeded.db'}")


@pytest.fixture(scope="module")
def compare_sqlite(tmp_path_factory):
    """The seeded store plus a second experiment (exp-rft) evaluated on the same problems."""
    return _seeded(f"sqlite:///{tmp_path_factory.mktemp('dash') / 'compare.db'}", comparison=True)


@pytest.fixture(scope="module")
def seeded_pg():
    from app.db.engine import scratch_database
    from tests.conftest import PG_ADMIN_URL

    with scratch_database(PG_ADMIN_URL, "mucode_test_dash") as url:
        yield _seeded(url)


def _app(monkeypatch, url: str, page: str | None = None, **query):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MUCODE_DATABASE_URL", url)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    _no_exception(at)
    if page is not None:
        at.switch_page(page)
        for k, v in query.items():
            at.query_params[k] = str(v)
        at.run()
        _no_exception(at)
    return at


def _no_exception(at) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _frame(at, column: str):
    for d in at.dataframe:
        v = d.value
        if column in v.columns:
            return v
    raise AssertionError(f"no table with a column {column!r}: {[list(d.value.columns) for d in at.dataframe]}")


def _texts(at) -> str:
    parts = [x.value for x in at.markdown] + [x.value for x in at.code] + [x.value for x in at.caption]
    parts += [x.value for x in at.info] + [x.value for x in at.success] + [x.value for x in at.title]
    return "\n".join(str(p) for p in parts)


# -- store queries on both backends ----------------------------------------------------------------------
def test_store_aggregates_match_the_seed(store):
    ids = seed_dashboard(store)
    evals = {e["id"]: e for e in store.dash_evaluations()}
    by_eval: dict[int, list[float]] = {}
    for row in store.dash_eval_turn_success():
        by_eval.setdefault(row["evaluation_id"], []).append(round(100 * row["true_success"], 1))
    for key, expected in EXPECTED["eval_true"].items():
        assert by_eval[ids["evaluations"][key]] == expected, key
    r0_bon = [r for r in store.dash_eval_turn_success() if r["evaluation_id"] == ids["evaluations"][(0, "mbpp", "bon")]]
    assert [100 * r["public_success"] for r in r0_bon] == EXPECTED["r0_mbpp_bon_public"]
    assert [100 * r["any_success"] for r in r0_bon] == EXPECTED["r0_mbpp_bon_any"]
    assert len(evals) == 8

    # experiment filter keeps everything (one experiment) and an unknown one keeps nothing
    exp_id = store.dash_experiments()[0]["id"]
    assert len(store.dash_eval_turn_success(exp_id)) == 24
    assert store.dash_eval_turn_success(exp_id + 999) == []

    cands = {r["round"]: (r["candidates"], r["public_pass"], r["private_pass"], r["public_only"])
             for r in store.dash_round_candidates()}
    assert cands == EXPECTED["train_candidates"]

    agree = [a for a in store.dash_verifier_agreement() if a["verifier_id"] == ids["v0"]]
    assert len(agree) == 1 and agree[0]["round"] == 0
    assert (agree[0]["pairs_right"], agree[0]["pairs"]) == EXPECTED["v0_r0_pairs"]
    assert (agree[0]["top1_misses"], agree[0]["solvable"]) == EXPECTED["v0_r0_top1"]

    errs = {(r["round"], r["error_type"]): r["candidates"] for r in store.dash_error_types()}
    assert errs[(0, "NameError")] == 1 and errs[(0, "SyntaxError")] == 1 and errs[(0, "ZeroDivisionError")] == 1
    assert errs[(0, "AssertionError")] == 3 and errs[(0, "timeout")] == 1 and errs[(0, "passed")] == 3
    assert errs[(1, "memory")] == 1 and errs[(1, "timeout")] == 1
    pub = {(r["round"], r["error_type"]): r["candidates"] for r in store.dash_error_types(suite="public")}
    assert pub[(0, "passed")] == 4  # the false public pass passes its public suite
    ev = {(r["round"], r["error_type"]): r["candidates"] for r in store.dash_error_types(source="eval")}
    assert ev == {(1, "AssertionError"): 1, (1, "passed"): 1}

    ex = store.dash_failure_examples(ids["r0"], "NameError")
    assert [e["external_id"] for e in ex] == ["mbpp/601"] and "foo" in ex[0]["feedback"]
    asserts = store.dash_failure_examples(ids["r0"], "AssertionError", limit=2)
    rest = store.dash_failure_examples(ids["r0"], "AssertionError", after_id=asserts[-1]["candidate_id"])
    assert len(asserts) == 2 and len(rest) == 1  # keyset paging
    assert not {a["candidate_id"] for a in asserts} & {r["candidate_id"] for r in rest}

    assert [u["external_id"] for u in store.dash_unsolved_problems()] == EXPECTED["unsolved_train"]
    assert [u["external_id"] for u in store.dash_unsolved_problems(source="eval")] == EXPECTED["unsolved_eval"]

    steps = {(r["round"], r["turn"]): (r["solved_by"], r["total"]) for r in store.dash_train_turn_success()}
    assert steps[(0, 1)] == (2, 5) and steps[(0, 2)] == (3, 5) and steps[(1, 2)] == (2, 3)

    jobs = {(j["kind"], j["state"]): j["jobs"] for j in store.dash_jobs_summary()}
    assert jobs[("execute", "queued")] == 2 and jobs[("train_generator", "failed")] == 1
    assert store.dash_jobs("failed")[0]["error"] == "RuntimeError: CUDA out of memory"


def test_store_problem_queries(store):
    ids = seed_dashboard(store)
    assert [p["external_id"] for p in store.dash_search_problems("longest CHAIN")] == ["mbpp/601"]
    hits = store.dash_search_problems("mbpp/60")
    assert [p["external_id"] for p in hits] == ["mbpp/601", "mbpp/602", "mbpp/603"]
    assert store.dash_count_problems("mbpp/60") == 3
    assert [p["external_id"] for p in store.dash_search_problems("mbpp/60", limit=2, offset=2)] == ["mbpp/603"]
    assert store.dash_search_problems("100%_") == []  # LIKE wildcards are escaped
    assert store.dash_count_problems(None, with_rollouts=True) == 4  # 601, 602, 603 and mbpp/11 (eval)
    assert store.dash_search_problems("mbpp/602")[0]["rollouts"] == 3

    p602 = ids["problems"]["mbpp/602"]
    ranking = store.dash_problem_ranking(p602, ids["v0"])
    assert [r["score"] for r in ranking] == [1.2, 0.9, 0.8, 0.5]
    assert [r["private_passed"] for r in ranking] == [False, True, False, False]
    assert ranking[1]["wrong_above"] == 1 and ranking[0]["wrong_above"] is None
    assert [r["rank"] for r in ranking] == [1, 2, 3, 4]
    assert [v["id"] for v in store.dash_problem_verifiers(p602)] == [ids["v1"], ids["v0"]]

    rd = store.dash_rollout(ids["rollouts"]["r0/602/0"])
    assert [t["turn"] for t in rd["turns"]] == [1, 2, 3]
    first = rd["turns"][0]["candidates"][0]
    assert "while True" in first["code"] and first["executions"]["private"]["status"] == "timeout"
    assert first["executions"]["public"]["tests"][0]["outcome"] == "error"
    assert rd["turns"][1]["messages"][-1]["content"].startswith("Feedback: Timeout")
    assert first["scores"][0]["score"] == 0.5

    bon = store.dash_rollout(ids["rollouts"]["eval/11/0"])
    cands = bon["turns"][0]["candidates"]
    assert [c["chosen"] for c in cands] == [False, True] and cands[1]["private_passed"] is True

    targets = store.dash_relabel_targets(p602)
    assert len(targets) == 4
    assert {t["target_candidate_id"] for t in targets} == {ids["target_602"]}
    assert sorted(t["turn_index"] for t in targets if t["source"] == "relabeled") == [1, 2, 3]
    state = store.dash_sft_state(targets[0]["id"])
    assert state["messages"][0]["role"] == "user" and "# 602" in state["target_code"]

    live = {r["verifier_id"]: r for r in store.dash_verifier_live_metrics()}
    # v0 pooled over all its candidates: 3 correct of 10; AUC from the rank-sum formula
    assert live[ids["v0"]]["candidates"] == 10 and live[ids["v0"]]["correct"] == 3
    assert live[ids["v0"]]["auc"] == pytest.approx(20 / 21)
    cal = store.dash_verifier_calibration(ids["v0"], bins=5)
    assert sum(b["candidates"] for b in cal) == 10 and cal[-1]["observed"] == 1.0
    assert cal[0]["auc"] == pytest.approx(20 / 21) and cal[0]["total"] == 10 and cal[0]["correct"] == 3

    # per-round restriction (what the dashboard asks for, round by round)
    only_r1 = store.dash_round_candidates(round_ids=[ids["r1"]])
    assert [r["round"] for r in only_r1] == [1] and only_r1[0]["candidates"] == 6
    assert {r["round"] for r in store.dash_error_types(round_ids=[ids["r0"]])} == {0}
    assert {a["round"] for a in store.dash_verifier_agreement(source="train", round_ids=[ids["r1"]])} == {1}
    ev_only = store.dash_verifier_agreement(source="eval", round_ids=[ids["r1"]])
    assert [a["evaluation"] for a in ev_only] == ["exp-demo/r1/mbpp/bon"]
    assert store.dash_round_candidates(round_ids=[]) == []


def test_store_on_an_empty_database(store):
    assert store.dash_summary()["candidates"] == 0
    for name in ("dash_experiments", "dash_rounds", "dash_round_candidates", "dash_train_turn_success",
                 "dash_evaluations", "dash_eval_turn_success", "dash_verifier_agreement", "dash_jobs_summary",
                 "dash_jobs", "dash_job_step_times", "dash_error_types", "dash_unsolved_problems",
                 "dash_verifiers", "dash_verifier_live_metrics", "dash_search_problems"):
        assert getattr(store, name)() == [], name
    assert store.dash_rollout(1) is None and store.dash_problem("mbpp/1") is None


# -- pages -------------------------------------------------------------------------------------------------
def test_overview_page(seeded_sqlite, monkeypatch):
    url, _ = seeded_sqlite
    at = _app(monkeypatch, url)
    assert at.title[0].value == "Overview"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Candidates"] == "18" and metrics["Rounds"] == "2" and metrics["Evaluations"] == "8"
    assert metrics["Queued"] == "2" and metrics["Running"] == "1" and metrics["Failed"] == "1"

    pivot = _frame(at, "mbpp · bon")
    assert list(pivot.index) == [(0, "G1 · RM0"), (1, "G1 · RM1")]  # (round, generator · verifier pair)
    pivot = pivot.droplevel("pair")
    assert pivot.loc[0, "mbpp · bon"] == "50.0" and pivot.loc[1, "mbpp · bon"] == "100.0"
    assert pivot.loc[1, "humaneval · greedy"] == "66.7" and pivot.loc[0, "mbpp · greedy"] == "50.0"
    per_turn = _frame(at, "any-of-chains")
    r0bon = per_turn[per_turn["evaluation"] == "exp-demo/r0/mbpp/bon"]
    assert list(r0bon["true success"]) == EXPECTED["eval_true"][(0, "mbpp", "bon")]
    assert list(r0bon["public success"]) == EXPECTED["r0_mbpp_bon_public"]

    train = _frame(at, "solved by turn (%)")
    assert list(train[train["round"] == "0"]["solved by turn (%)"]) == EXPECTED["train_true"][0]
    assert list(train[train["round"] == "1"]["solved by turn (%)"]) == EXPECTED["train_true"][1]

    gap = _frame(at, "false public passes")  # trajectories: round 0 ended 4/5 on a public pass, 3/5 right
    assert list(gap["false public passes"]) == [1, 0] and list(gap["correct (private) (%)"]) == [60.0, 66.7]
    assert list(gap["ended on a public pass (%)"]) == [80.0, 66.7]
    assert list(gap["false (% of public passes)"]) == [25.0, 0.0]
    eg = _frame(at, "gap (points)")
    assert eg[eg["evaluation"] == "exp-demo/r0/mbpp/bon"]["gap (points)"].iloc[0] == 25.0

    agree = _frame(at, "top-1 miss (%)")
    row = agree[(agree["verifier"] == "exp-demo/r0/verifier") & (agree["on"] == "round 0")].iloc[0]
    assert row["pair accuracy (%)"] == 80.0 and row["disagreement (%)"] == 20.0 and row["top-1 miss (%)"] == 50.0

    rounds = _frame(at, "generator out")
    assert list(rounds["status"]) == ["done", "running"] and list(rounds["solved"]) == ["60.0%", "66.7%"]
    steps = _frame(at, "step")
    assert list(steps[steps["round"] == 0]["took"]) == ["50.0 min", "2.0 min", "30.0 min", "30.0 s", "70.0 min",
                                                        "27.5 min"]
    failed = _frame(at, "attempts")
    assert "CUDA out of memory" in " ".join(map(str, failed["error"]))
    assert len(at.get("vega_lite_chart")) == 5  # accuracy per round, per turn (faceted), training, gap, steps
    assert "mucode dashboard ·" in _texts(at)


def test_trajectories_page(seeded_sqlite, monkeypatch):
    url, ids = seeded_sqlite
    rid = ids["rollouts"]["r0/602/0"]
    at = _app(monkeypatch, url, "views/trajectories.py", problem="mbpp/602", rollout=rid)
    assert at.selectbox(key="traj_problem").value == "mbpp/602"
    assert at.selectbox(key="traj_rollout").value == rid
    rollouts = _frame(at, "rollout")
    assert sorted(rollouts["rollout"]) == sorted([ids["rollouts"]["r0/602/0"], ids["rollouts"]["r0/602/1"],
                                                  ids["rollouts"]["r1/602/0"]])
    codes = [c.value for c in at.code]
    assert any("while True" in c for c in codes)  # turn 1's code
    assert any(c.startswith("Timeout: the code ran longer") for c in codes)  # its feedback
    assert any("first repeated character" in c for c in codes)  # the exact first user message
    assert any(c.startswith("Feedback: Timeout") for c in codes)  # turn 2 saw turn 1's feedback
    tests = [d.value for d in at.dataframe if "outcome" in d.value.columns]
    assert len(tests) >= 3 and "error" in set(tests[0]["outcome"]) and "timeout" in set(tests[0]["status"])
    text_all = _texts(at)
    assert "exp-demo/r0/verifier: 0.500" in text_all and "**chosen**" in text_all
    # compare: default = first vs last turn of this rollout, with a code diff
    assert at.selectbox(key="cmp_a").value == (rid, 1) and at.selectbox(key="cmp_b").value == (rid, 3)
    diff = [c.value for c in at.code if c.language == "diff"]
    assert diff and "-    while True:" in diff[0] and "+    return 2" in diff[0]

    # search by text: "lucid" finds mbpp/603; choosing it opens its rollout
    at.text_input(key="traj_search").set_value("lucid").run()
    _no_exception(at)
    assert "mbpp/603" in at.selectbox(key="traj_problem").options[-1]
    at.selectbox(key="traj_problem").set_value("mbpp/603").run()
    _no_exception(at)
    # newest round first: round 1's trajectory of mbpp/603 opens (timeout -> memory -> NameError)
    assert at.selectbox(key="traj_rollout").value == ids["rollouts"]["r1/603/0"]
    assert any("time.sleep(100)" in c.value for c in at.code)
    assert at.query_params["problem"] == "mbpp/603"


def test_trajectories_best_of_n_turn(seeded_sqlite, monkeypatch):
    url, ids = seeded_sqlite
    rid = ids["rollouts"]["eval/11/0"]
    at = _app(monkeypatch, url, "views/trajectories.py", problem="mbpp/11", rollout=rid)
    radio = at.radio(key=next(r.key for r in at.radio if r.key and r.key.startswith("pick_")))
    assert radio.value == 1  # the chosen candidate is shown first
    assert any("s.rfind(ch)" in c.value for c in at.code)
    radio.set_value(0).run()
    _no_exception(at)
    assert any("s.replace(ch, '')" in c.value for c in at.code)
    assert any("remove_occ('hello','l')" in c.value for c in at.code)  # its own public feedback


def test_failures_page(seeded_sqlite, monkeypatch):
    url, ids = seeded_sqlite
    at = _app(monkeypatch, url, "views/failures.py")
    table = _frame(at, "round 0")
    counts = dict(zip(table.index, table["round 0"]))
    assert counts["AssertionError"] == 3 and counts["NameError"] == 1 and counts["SyntaxError"] == 1
    assert counts["ZeroDivisionError"] == 1 and counts["timeout"] == 1
    limits = _frame(at, "max_ms")
    lim = {(r["round"], r["status"]): r["candidates"] for _, r in limits.iterrows() if "status" in limits}
    assert lim == {(0, "timeout"): 1, (1, "memory"): 1, (1, "timeout"): 1}
    unsolved = _frame(at, "external_id")
    assert list(unsolved["external_id"]) == EXPECTED["unsolved_train"]

    # pick round 0 / NameError: its example links to the exact turn on the Trajectories page
    at.selectbox(key="fail_round").set_value(0).run()
    at.selectbox(key="fail_type").set_value("NameError").run()
    _no_exception(at)
    links = [p for p in at.get("page_link") if p.proto.label.startswith("Open mbpp/601")]
    assert len(links) == 1
    assert links[0].proto.page.endswith("trajectories") or "trajectories" in links[0].proto.page
    qs = parse_qs(links[0].proto.query_string)
    assert qs == {"problem": ["mbpp/601"], "rollout": [str(ids["rollouts"]["r0/601/0"])], "turn": ["1"]}
    assert any("name 'foo' is not defined" in c.value for c in at.code)

    # ... and following it shows that turn
    at.switch_page("views/trajectories.py")
    at.query_params.update({k: v[0] for k, v in qs.items()})
    at.run()
    _no_exception(at)
    assert at.selectbox(key="traj_rollout").value == ids["rollouts"]["r0/601/0"]
    assert any("return foo(x)" in c.value for c in at.code)

    # evaluation chains: the problem no chain ever solved
    at = _app(monkeypatch, url, "views/failures.py")
    at.radio(key="fail_source").set_value("eval").run()
    _no_exception(at)
    assert list(_frame(at, "external_id")["external_id"]) == EXPECTED["unsolved_eval"]


def test_failures_page_from_a_link(seeded_sqlite, monkeypatch):
    url, _ = seeded_sqlite
    at = _app(monkeypatch, url, "views/failures.py", round=1, error="memory")
    assert at.selectbox(key="fail_round").value == 1 and at.selectbox(key="fail_type").value == "memory"
    assert any("exceeded the memory limit" in c.value for c in at.code)


def test_rankings_page(seeded_sqlite, monkeypatch):
    url, ids = seeded_sqlite
    at = _app(monkeypatch, url, "views/rankings.py", problem="mbpp/602")
    assert at.selectbox(key="rank_problem").value == "mbpp/602"
    assert at.selectbox(key="rank_verifier").value == ids["v1"]  # newest verifier first
    at.selectbox(key="rank_verifier").set_value(ids["v0"]).run()
    _no_exception(at)
    ranking = _frame(at, "rank")
    assert list(ranking["score"]) == [1.2, 0.9, 0.8, 0.5]
    assert list(ranking["private"]) == ["✗", "✓", "✗", "✗"]
    assert list(ranking["public"]) == ["✓", "✓", "✗", "✗"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Rank of best correct"] == "2" and metrics["Incorrect above it"] == "1"

    vm = _frame(at, "AUC")
    got = {(r["verifier"], r["measured on"]): (r["AUC"], r["pair accuracy"]) for _, r in vm.iterrows()}
    assert got == {("exp-demo/r0/verifier", "holdout"): (0.81, 0.77),
                   ("exp-demo/r0/verifier", "mbpp_test"): (0.79, 0.74),
                   ("exp-demo/r1/verifier", "stored"): (0.86, 0.83)}
    assert vm[vm["measured on"] == "holdout"]["ECE"].iloc[0] == 0.12
    assert vm[vm["verifier"] == "exp-demo/r1/verifier"]["scored"].iloc[0] == 8

    targets = _frame(at, "state (turn)")
    assert len(targets) == 4 and sorted(targets["source"]) == ["positive", "relabeled", "relabeled", "relabeled"]
    assert all(t.startswith(f"#{ids['target_602']} ") for t in targets["target"])
    assert any("first repeated character" in c.value for c in at.code)  # the state's messages
    assert any("# 602" in c.value for c in at.code)  # the target

    # live check of v0: pooled AUC 20/21, within-problem pair accuracy 4/5, top-1 miss 1 of 2
    at.selectbox(key="calib_verifier").set_value(ids["v0"]).run()
    _no_exception(at)
    live = {m.label: m.value for m in at.metric}
    assert live["Scored & executed"] == "10" and live["Pooled AUC"] == "0.952"
    assert live["Pair accuracy within problem"] == "80.0%" and live["Top-1 miss"] == "50.0%"


def test_every_page_on_an_empty_store(sqlite_store, monkeypatch):
    url = str(sqlite_store.engine.url)
    at = _app(monkeypatch, url)
    assert any("Nothing here yet" in i.value for i in at.info)
    for page in PAGES[1:]:
        at.switch_page(page).run()
        _no_exception(at)
        assert at.info, page  # a helpful message, not an empty page


def test_unmigrated_and_unreachable_database(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    for url, needle in ((f"sqlite:///{tmp_path / 'empty.db'}", "mucode db upgrade"),
                        ("postgresql+psycopg://nobody@127.0.0.1:1/none", "Cannot open the database")):
        monkeypatch.setenv("MUCODE_DATABASE_URL", url)
        at = AppTest.from_file(APP, default_timeout=60).run()
        assert not at.exception
        assert at.error and needle in at.error[0].value


def test_every_page_on_postgres(seeded_pg, monkeypatch):
    url, ids = seeded_pg
    at = _app(monkeypatch, url)
    assert _frame(at, "mbpp · bon").droplevel("pair").loc[1, "mbpp · bon"] == "100.0"
    at.switch_page("views/trajectories.py")
    at.query_params.update(problem="mbpp/601", rollout=str(ids["rollouts"]["r0/601/0"]))
    at.run()
    _no_exception(at)
    assert any("return foo(x)" in c.value for c in at.code)
    at.switch_page("views/failures.py").run()
    _no_exception(at)
    assert _frame(at, "round 0").loc["NameError", "round 0"] == 1
    at.switch_page("views/rankings.py").run()
    _no_exception(at)
    assert len(_frame(at, "rank")) >= 1


def test_cli_command_line():
    from typer.testing import CliRunner

    from app.cli.dashboard import APP_PATH, dashboard_command
    from app.cli.main import root

    cmd = dashboard_command(8765, "0.0.0.0")  # noqa: S104 - the address is only passed on
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == APP_PATH and APP_PATH.is_file()
    assert cmd[cmd.index("--server.port") + 1] == "8765" and cmd[cmd.index("--server.address") + 1] == "0.0.0.0"  # noqa: S104
    out = CliRunner().invoke(root, ["dashboard", "--help"])
    assert out.exit_code == 0 and "--port" in out.output and "--address" in out.output


def test_experiment_picker_scopes_the_pages(sqlite_store, monkeypatch):
    from tests.helpers.seed import add_problem, add_rollout, add_round

    seed_dashboard(sqlite_store)
    pid = add_problem(sqlite_store, "mbpp/700", prompt="Another experiment's problem.")
    rid = add_round(sqlite_store, "exp-b", 0)
    add_rollout(sqlite_store, problem_id=pid, sample_index=0, round_id=rid,
                turns=[{"response": "def f(x):\n    return 0", "public": False, "private": False,
                        "feedback": "AssertionError: assert f(1) == 2"}])
    url = str(sqlite_store.engine.url)
    at = _app(monkeypatch, url)
    picker = at.sidebar.selectbox(key="experiment")
    assert set(picker.options) == {"exp-b", "exp-demo", "(all experiments)"}
    assert picker.options[-1] == "(all experiments)"
    for name, expected in (("exp-demo", ["exp-demo", "exp-demo"]), ("exp-b", ["exp-b"]),
                           ("(all experiments)", ["exp-b", "exp-demo", "exp-demo"])):
        at.sidebar.selectbox(key="experiment").set_value(name).run()
        _no_exception(at)
        assert sorted(_frame(at, "generator out")["experiment"]) == expected, name
    # the choice survives a page switch and scopes the next page too
    at.sidebar.selectbox(key="experiment").set_value("exp-b").run()
    at.switch_page("views/failures.py").run()
    _no_exception(at)
    assert at.sidebar.selectbox(key="experiment").value == "exp-b"
    assert list(_frame(at, "round 0").index) == ["AssertionError"]
    # a link can preselect the experiment
    at = _app(monkeypatch, url, "views/overview.py", experiment="exp-demo")
    assert at.sidebar.selectbox(key="experiment").value == "exp-demo"


# -- comparison, scaling and verifier diagnostics ---------------------------------------------------------
def _brute_best_of_n(cands: list[tuple[bool, bool, float]], n: int) -> float:
    """Mean first-turn success of the real pt+lv selector over every n-subset of the candidates."""
    import itertools
    from types import SimpleNamespace

    from app.selection import select

    objs = [SimpleNamespace(sample_index=i, public_passed=p, private_passed=q, score=s)
            for i, (p, q, s) in enumerate(cands)]
    picks = [select("pt+lv", list(sub)) for sub in itertools.combinations(objs, n)]
    return sum(p.public_passed and p.private_passed for p in picks) / len(picks)


def _v0_candidates() -> list[tuple[float, bool]]:
    """v0's scores and oracle labels in the seed (its 10 round-0 training candidates)."""
    return [(-1.0, False), (2.0, True), (1.5, True), (0.5, False), (0.8, False), (1.2, False), (0.9, True),
            (-2.0, False), (-1.5, False), (-0.5, False)]


def test_store_comparison_queries(store):
    import math

    from app.calibration import auc, verifier_curves
    from app.scaling import scaling_curve

    ids = seed_dashboard(store)
    rft = seed_comparison(store, ids)
    # per-problem outcomes: their mean over problems is the stored accuracy, turn by turn, for every evaluation
    ev_ids = [e["id"] for e in store.dash_evaluations()]
    rows = store.dash_eval_problem_outcomes(ev_ids)
    per: dict[int, dict[int, list]] = {}
    for r in rows:
        per.setdefault(r["evaluation_id"], {}).setdefault(r["problem_id"], []).append((r["first_solved"], r["chains"]))
    stored = {(a["evaluation_id"], a["turn"]): a["true_success"] for a in store.dash_eval_turn_success()}
    assert len(stored) == 12 * 3
    for (ev, t), acc in stored.items():
        shares = [sum(n for f, n in h if f is not None and f <= t) / sum(n for _, n in h) for h in per[ev].values()]
        assert sum(shares) / len(shares) == pytest.approx(acc), (ev, t)
    for (rnd, mode), expected in COMPARE_EXPECTED["eval_true"].items():
        ev = rft["evaluations"][(rnd, mode)]
        assert [round(100 * stored[(ev, t)], 1) for t in (1, 2, 3)] == expected
    assert store.dash_eval_problem_outcomes([]) == []

    # first-turn candidates of the BoN evaluation: all 2 problems x 2 chains x 5, scored by its verifier
    first = store.dash_bon_first_turn(rft["evaluations"][(1, "bon")])
    assert len(first) == 20 and all(r["score"] is not None for r in first)
    curve = scaling_curve(first, "pt+lv", 5)
    for n in range(1, 6):
        brute = [_brute_best_of_n([c for chain in chains for c in chain], n) for chains in COMPARE_FIRST_TURN.values()]
        assert curve.at(n) == pytest.approx(brute), n
    assert store.dash_bon_first_turn(rft["evaluations"][(1, "greedy")]) == []

    # ROC and reliability of v0 on its 10 scored candidates (no ties)
    v0 = _v0_candidates()
    pos = [s for s, y in v0 if y]
    neg = [s for s, y in v0 if not y]
    mann_whitney = sum(p > q for p in pos for q in neg) / (len(pos) * len(neg))
    rows = store.dash_verifier_curves([ids["v0"]], points=100, bins=10)
    curves = verifier_curves(rows, 10)[ids["v0"]]
    assert len({r["tile"] for r in rows}) == 10 and curves["candidates"] == 10 and curves["correct"] == 3
    assert curves["auc"] == pytest.approx(mann_whitney) == pytest.approx(20 / 21)
    assert auc(curves["roc"]) == pytest.approx(mann_whitney)
    coarse = verifier_curves(store.dash_verifier_curves([ids["v0"]], points=2), 10)[ids["v0"]]["roc"]
    assert [(p["fpr"], p["tpr"]) for p in coarse] == [(0, 0), (2 / 7, 1.0), (1.0, 1.0)]
    assert coarse[1]["threshold"] == 0.8  # the upper half: 0.8 and above
    assert store.dash_verifier_curves([ids["v0"]], source="eval") == []
    assert len(store.dash_verifier_curves([ids["v0"]], source="train")) == len(rows)
    both = verifier_curves(store.dash_verifier_curves([ids["v0"], ids["v1"]]), 10)
    assert set(both) == {ids["v0"], ids["v1"]} and both[ids["v1"]]["auc"] == 1.0

    expected: dict[int, list] = {}
    for s, y in v0:
        p = 1 / (1 + math.exp(-s))
        e = expected.setdefault(int(p * 10), [0, 0, 0.0])
        e[0], e[1], e[2] = e[0] + 1, e[1] + int(y), e[2] + p
    rel = curves["reliability"]
    got = {r["bin"]: [r["candidates"], r["observed"] * r["candidates"], r["predicted"] * r["candidates"]]
           for r in rel["points"]}
    assert got.keys() == expected.keys()
    for b, (n, k, sp) in expected.items():
        assert got[b][:2] == [n, k] and got[b][2] == pytest.approx(sp), b
    assert rel["candidates"] == 10 and rel["points"][-1]["observed"] == 1.0
    with pytest.raises(ValueError, match="unknown source"):
        store.dash_verifier_curves([ids["v0"]], source="both")


def test_compare_page(compare_sqlite, monkeypatch):
    url, _ = compare_sqlite
    at = _app(monkeypatch, url, "views/compare.py")
    assert at.title[0].value == "Compare"
    assert sorted(at.multiselect(key="cmp_experiments").value) == ["exp-demo", "exp-rft"]
    assert at.selectbox(key="cmp_setting").value == "BoN N=5 C=2 pt+lv"  # Best-of-N first
    assert at.selectbox(key="cmp_turn").value == 3

    # accuracy per round at turn 3, with intervals over the 2 problems
    table = _frame(at, "exp-rft")
    demo = next(col for col in table.columns if col.startswith("exp-demo"))
    assert table.loc[0, demo].startswith("50.0 [") and table.loc[1, demo].startswith("100.0 [")
    assert table.loc[0, "exp-rft"].startswith("50.0 [") and table.loc[1, "exp-rft"].startswith("75.0 [")
    # round 1, exp-rft: problems score 1/2 and 1 -> the bootstrap means are 0.5, 0.75 or 1
    assert table.loc[1, "exp-rft"] == "75.0 [50.0, 100.0]"

    # paired: exp-rft minus exp-demo at round 1: per problem (1/2 - 1) and (1 - 1) -> -25 points
    at.selectbox(key="cmp_baseline").set_value(demo).run()
    _no_exception(at)
    paired = _frame(at, "difference (points)")
    r1 = paired[paired["round"] == 1].iloc[0]
    assert r1["series"] == "exp-rft" and r1["difference (points)"] == "-25.0" and r1["shared problems"] == 2
    assert r1["95% interval"] == "[-50.0, +0.0]" and r1["verdict"] == "no clear difference"

    # the scaling curve of round 1 (exp-demo stored no first-turn candidates for mbpp/12: left out)
    scaling = _frame(at, "exp-rft · pt+lv")
    for n in range(1, 6):
        brute = [_brute_best_of_n([c for chain in chains for c in chain], n) for chains in COMPARE_FIRST_TURN.values()]
        assert scaling.loc[n, "exp-rft · pt+lv"].startswith(f"{100 * sum(brute) / 2:.1f} ["), n
    assert scaling.loc[1, "exp-rft · random"] == scaling.loc[5, "exp-rft · random"]
    assert "Exact (unbiased) for the first turn only" in _texts(at)
    assert "left out" in _texts(at)

    # per-turn curves follow the chosen round; turn 1 restricts the per-round table
    at.selectbox(key="cmp_turn").set_value(1).run()
    _no_exception(at)
    assert _frame(at, "exp-rft").loc[1, "exp-rft"].startswith("50.0 [")
    at.checkbox(key="cmp_extend").check().run()
    _no_exception(at)
    assert 10 in _frame(at, "exp-rft · pt+lv").index  # pooled over the 2 chains: n up to 10

    # greedy has no scaling curve
    at.selectbox(key="cmp_setting").set_value("greedy (T=0)").run()
    _no_exception(at)
    assert any("needs a Best-of-N setting" in i.value for i in at.info)


def test_compare_page_from_a_link_with_one_experiment(compare_sqlite, monkeypatch):
    url, _ = compare_sqlite
    at = _app(monkeypatch, url, "views/compare.py", experiments="exp-rft")
    assert at.multiselect(key="cmp_experiments").value == ["exp-rft"]
    assert any("two or more experiments" in i.value for i in at.info)
    # the dataset both experiments share comes first, unless a link chooses another
    assert _app(monkeypatch, url, "views/compare.py").selectbox(key="cmp_dataset").value == "mbpp"
    at = _app(monkeypatch, url, "views/compare.py", dataset="humaneval")
    assert at.selectbox(key="cmp_dataset").value == "humaneval"
    assert list(_frame(at, "exp-demo").index) == [0, 1]


def test_rankings_calibration_and_roc_per_round(seeded_sqlite, monkeypatch):
    url, _ = seeded_sqlite
    at = _app(monkeypatch, url, "views/rankings.py", problem="mbpp/602")
    summary = _frame(at, "ECE (10 bins)")
    got = {r["verifier"]: (r["round"], r["candidates"], r["correct"], r["exact AUC"]) for _, r in summary.iterrows()}
    # v0: 10 training candidates, AUC 20/21; v1: 6 training + 2 evaluation candidates, every correct one on top
    assert got == {"exp-demo/r0/verifier": (0, 10, 3, 0.952), "exp-demo/r1/verifier": (1, 8, 3, 1.0)}
    v0 = summary[summary["verifier"] == "exp-demo/r0/verifier"].iloc[0]
    assert 0 < v0["ECE (10 bins)"] < 1
    charts = at.get("vega_lite_chart")
    assert len(charts) >= 4  # ranking, live deciles, reliability, ROC
    at.radio(key="calib_source").set_value("evaluation chains (test problems)").run()
    _no_exception(at)
    summary = _frame(at, "ECE (10 bins)")
    assert list(summary["verifier"]) == ["exp-demo/r1/verifier"] and list(summary["candidates"]) == [2]
