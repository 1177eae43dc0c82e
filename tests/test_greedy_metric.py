"""The greedy metric switch: the reference counts greedy N=1 by the label of the last executed turn (public and
private pass) under its stop rule; mucode's Best-of-N rule counts the first public pass. Both are reported side
by side and ``eval.greedy_metric`` picks the headline (``true_success``, the stored ``solved`` flags)."""

from __future__ import annotations

import itertools

import pytest

from app import evaluation as E
from app import rounds as R
from app.env.stop import is_done
from app.protocol import ExperimentConfig
from tests.helpers import seed as S


def P(problem, chain, turn, pub, priv):
    return E.Pick(problem, chain, turn, pub, priv)


# Under public_and_private the chain goes on after a public pass that fails the private tests: solved at turn 2
# by the reference's count, never by the first public pass.
DIFFERING = [P(1, 0, 1, True, False), P(1, 0, 2, True, True)]


def test_a_chain_where_the_two_metrics_differ():
    last = E.compute_metrics(DIFFERING, 3, metric="last_turn")
    first = E.compute_metrics(DIFFERING, 3, metric="first_public")
    assert [r["true_success"] for r in last["per_turn"]] == [0.0, 1.0, 1.0]
    assert [r["true_success"] for r in first["per_turn"]] == [0.0, 0.0, 0.0]
    assert (last["metric"], first["metric"]) == ("last_turn", "first_public")
    # Side by side in both, whatever the headline.
    for m in (last, first):
        assert [r["last_turn_success"] for r in m["per_turn"]] == [0.0, 1.0, 1.0]
        assert [r["first_public_success"] for r in m["per_turn"]] == [0.0, 0.0, 0.0]
        assert (m["last_turn_success"], m["first_public_success"]) == (1.0, 0.0)
        assert m["false_public"] == 1 and [r["public_success"] for r in m["per_turn"]] == [1.0, 1.0, 1.0]
    assert last["any_success"] == 1.0 and first["any_success"] == 0.0
    assert [r["solved"] for r in E.result_rows(DIFFERING, "last_turn")] == [False, True]
    assert [r["solved"] for r in E.result_rows(DIFFERING, "first_public")] == [False, False]
    # A last turn that passes private but not public is a failure for the reference too (success = both).
    assert E.compute_metrics([P(1, 0, 1, False, True)], 1, metric="last_turn")["true_success"] == 0.0
    with pytest.raises(ValueError, match="unknown chain metric 'best'"):
        E.compute_metrics(DIFFERING, 3, metric="best")


def _chains(rule: str, turns: int):
    """Every greedy chain a stop rule can produce: each turn's (public, private) verdicts, cut where it stops."""
    verdicts = [(False, False), (True, False), (True, True), (False, True)]
    seen = set()
    for seq in itertools.product(verdicts, repeat=turns):
        chain = []
        for t, (pub, priv) in enumerate(seq, start=1):
            chain.append((pub, priv))
            if is_done(t, turns, pub, priv, rule=rule):
                break
        seen.add(tuple(chain))
    return sorted(seen)


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_the_metrics_agree_under_the_public_stop_rule_and_not_under_public_and_private(turns):
    def metrics(rule, metric):
        picks = [P(i, 0, t, pub, priv) for i, chain in enumerate(_chains(rule, turns))
                 for t, (pub, priv) in enumerate(chain, start=1)]
        return [r["true_success"] for r in E.compute_metrics(picks, turns, metric=metric)["per_turn"]]

    assert metrics("public", "last_turn") == metrics("public", "first_public")
    both = metrics("public_and_private", "last_turn"), metrics("public_and_private", "first_public")
    assert (both[0] == both[1]) is (turns == 1)  # a second turn is where a false public pass can be repaired


def test_eval_specs_carry_the_metric():
    cfg = ExperimentConfig(base_model="m", eval={"selectors": ["pt", "pt+lv"]})
    specs = R.eval_specs(cfg, name_prefix="x", generator_label="G1", generator_id=1, verifier_id=2,
                         datasets=["mbpp:test"])
    by_mode = {(s.mode, s.selector): s for s in specs}
    assert by_mode[("greedy", "first")].metric == "last_turn"  # the reference's count is the default
    assert by_mode[("bon", "pt")].metric == by_mode[("bon", "pt+lv")].metric == "first_public"
    stored = by_mode[("greedy", "first")].stored_config()
    assert stored["metric"] == "last_turn" and {k: v for k, v in stored.items() if k != "metric"} == \
        by_mode[("greedy", "first")].collect_spec()
    mine = ExperimentConfig(base_model="m", eval={"greedy_metric": "first_public"})
    assert R.eval_specs(mine, name_prefix="x", generator_label="G1", generator_id=1, verifier_id=2,
                        datasets=["mbpp:test"])[0].metric == "first_public"
    # An experiment frozen before the switch keeps the count it was evaluated with.
    legacy = ExperimentConfig(base_model="m").model_dump(mode="json")
    del legacy["eval"]["greedy_metric"]
    assert ExperimentConfig.frozen(legacy).eval.greedy_metric == "first_public"


def _greedy_eval(store, name, config, problems, gen, chains):
    ev = store.create_evaluation(name, generator_id=gen, dataset="mbpp", split="test", mode="greedy",
                                 num_candidates=1, num_chains=1, max_turns=3, config=config)
    for pid, turns in zip(problems, chains, strict=True):
        S.add_rollout(store, problem_id=pid, sample_index=0, evaluation_id=ev, generator_id=gen,
                      turns=[{"response": f"{name}-{pid}-{t}", "public": p, "private": q}
                             for t, (p, q) in enumerate(turns, start=1)])
    return ev


def test_finalized_greedy_evaluations_follow_their_metric(store):
    from workers.tasks.rounds import create_evaluation, finalize_evaluation

    problems = [S.add_problem(store, f"mbpp/{20 + i}", split="test") for i in range(2)]
    gen = S.add_model(store, "gen", base_model="org/tiny")  # a hub name: resolvable without a download
    # Chains run under public_and_private: problem 0 repaired a false public pass at turn 2, problem 1 solved
    # at turn 1.
    chains = [[(True, False), (True, True)], [(True, True)]]
    cfg = ExperimentConfig(base_model="m", rollout={"stop_rule": "public_and_private"},
                           eval={"limit": 2, "selectors": ["pt"]})
    (spec,) = [s for s in R.eval_specs(cfg, name_prefix="e", generator_label="G1", generator_id=gen,
                                       verifier_id=None, datasets=["mbpp:test"]) if s.mode == "greedy"]
    # The evaluation row written for a round or `mucode eval` records the metric.
    ev_id = create_evaluation(store, spec, then=None, experiment_id=None, round_id=None)
    assert store.get_evaluation(ev_id).config["metric"] == "last_turn"

    ref = _greedy_eval(store, "ref", spec.stored_config(), problems, gen, chains)
    legacy = _greedy_eval(store, "legacy", spec.collect_spec(), problems, gen, chains)  # stored before: no metric
    m_ref, m_legacy = finalize_evaluation(store, ref), finalize_evaluation(store, legacy)
    assert [r["true_success"] for r in m_ref["per_turn"]] == [0.5, 1.0, 1.0]
    assert [r["true_success"] for r in m_legacy["per_turn"]] == [0.5, 0.5, 0.5]
    assert m_ref["metric"] == "last_turn" and m_legacy["metric"] == "first_public"
    for m in (m_ref, m_legacy):
        assert (m["last_turn_success"], m["first_public_success"]) == (1.0, 0.5)
    solved = {r["problem_id"]: r["solved"] for r in store.evaluation_results(ref) if r["turn_index"] == 2}
    assert solved == {problems[0]: True}
    # The dashboard's SQL reads the stored solved flags: it shows the same numbers.
    dash = store.dash_eval_turn_success(evaluation_ids=[ref, legacy])
    for ev, m in ((ref, m_ref), (legacy, m_legacy)):
        rows = sorted((r for r in dash if r["evaluation_id"] == ev), key=lambda r: r["turn"])
        assert [r["true_success"] for r in rows] == pytest.approx([r["true_success"] for r in m["per_turn"]])


def test_eval_tables_show_both_counts_when_they_differ(capsys):
    from types import SimpleNamespace

    from app.cli import experiment as X

    def ev(name, metric, picks, mode="greedy"):
        return SimpleNamespace(id=len(name), name=name, dataset="mbpp", split="test", mode=mode, selector=None,
                               num_candidates=1, num_chains=1, max_turns=3, status="done",
                               metrics=E.compute_metrics(picks, 3, metric=metric))

    same = [P(1, 0, 1, False, False), P(1, 0, 2, True, True)]
    X.console.width = 200
    X.print_eval_tables([ev("e/r0/G1/mbpp-test/greedy", "last_turn", DIFFERING),
                         ev("e/r0/G0/mbpp-test/greedy", "last_turn", same)])
    out = capsys.readouterr().out
    rows = [" ".join(line.replace("│", " ").split()) for line in out.splitlines()]
    assert any(r.startswith("G1 greedy (T=0), last turn 0.0 100.0 100.0") for r in rows), out
    assert any(r.startswith("greedy (T=0), first public pass 0.0 0.0 0.0") for r in rows), out
    assert sum("first public pass" in r for r in rows) == 1  # G0's counts agree: one row
