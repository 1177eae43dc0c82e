"""Evaluation metrics (docs/method.md §7) on hand-built stores: every selector, numbers computed by hand.

Two problems (A, B), C=2 chains, N=3 candidates per turn, T=3. A candidate is (public, private, score). For the
lv, pt and pt+lv evaluations the chains see the same candidate pool; each selector picks differently, so its
chains stop at different turns (a chain stops at its first public-passing pick). The random evaluation uses a
pool where every candidate of a turn has the same verdicts, so its outcome does not depend on the draw.
The picks below are written by hand and checked against ``app.selection.select``; the expected metrics are
written by hand from the rules: solved at turn t = first public pass at t and that pick passes private;
true/public success are shares of the 4 chains, any-of-chains a share of the 2 problems.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app import evaluation as E
from app.selection import select, selection_seed
from tests.helpers import seed as S

F, T_ = False, True

# POOL[problem][chain] = turns; a turn = 3 candidates (public, private, score)
POOL = {
    "A": {
        0: [[(F, F, 0.9), (T_, F, 0.1), (T_, T_, 0.5)],
            [(T_, T_, 0.2), (F, F, 0.8), (F, F, 0.3)],
            [(T_, T_, 0.7), (F, F, 0.1), (F, F, 0.2)]],
        1: [[(F, F, 0.3), (F, F, 0.2), (F, F, 0.1)],
            [(F, F, 0.1), (T_, T_, 0.4), (T_, F, 0.9)],
            [(F, F, 0.5), (F, F, 0.6), (T_, T_, 0.1)]],
    },
    "B": {
        0: [[(F, F, 0.1), (F, F, 0.2), (F, F, 0.3)],
            [(F, F, 0.1), (F, F, 0.2), (F, F, 0.3)],
            [(T_, T_, 0.1), (F, F, 0.9), (F, F, 0.3)]],
        1: [[(T_, F, 0.6), (F, F, 0.2), (T_, F, 0.1)],
            [(F, F, 0.1), (F, F, 0.2), (F, F, 0.3)],
            [(F, F, 0.1), (F, F, 0.2), (F, F, 0.3)]],
    },
}
RANDOM_POOL = {  # every candidate of a turn has the same verdicts
    "A": {0: [(F, F), (T_, T_), (F, F)], 1: [(T_, F), (F, F), (F, F)]},
    "B": {0: [(F, F), (F, F), (F, F)], 1: [(T_, T_), (F, F), (F, F)]},
}
# The picks by hand: PICKS[selector][problem][chain] = chosen index per executed turn (the chain stops at the
# first public-passing pick).
PICKS = {
    "lv": {"A": {0: [0, 1, 0], 1: [0, 2]}, "B": {0: [2, 2, 1], 1: [0]}},
    "pt": {"A": {0: [1], 1: [0, 1]}, "B": {0: [0, 0, 0], 1: [0]}},
    "pt+lv": {"A": {0: [2], 1: [0, 2]}, "B": {0: [2, 2, 0], 1: [0]}},
}
# EXPECTED[selector] = per turn (true, public, any) and the number of false public passes
EXPECTED = {
    "lv": ([(0 / 4, 1 / 4, 0 / 2), (0 / 4, 2 / 4, 0 / 2), (1 / 4, 3 / 4, 1 / 2)], 2),
    "pt": ([(0 / 4, 2 / 4, 0 / 2), (1 / 4, 3 / 4, 1 / 2), (2 / 4, 4 / 4, 2 / 2)], 2),
    "pt+lv": ([(1 / 4, 2 / 4, 1 / 2), (1 / 4, 3 / 4, 1 / 2), (2 / 4, 4 / 4, 2 / 2)], 2),
    "random": ([(1 / 4, 2 / 4, 1 / 2), (2 / 4, 3 / 4, 2 / 2), (2 / 4, 3 / 4, 2 / 2)], 1),
    "greedy": ([(0 / 2, 1 / 2, 0 / 2), (1 / 2, 2 / 2, 1 / 2), (1 / 2, 2 / 2, 1 / 2)], 1),
}
GREEDY = {"A": [(F, F), (T_, T_), (F, F)], "B": [(T_, F), (F, F), (F, F)]}  # one chain, N = 1


def _flat(rows):
    return [float(x) for row in rows for x in row]


def _chain_turns(selector, problem, chain, rollout_seed):
    """The turn specs of one chain for seed.add_rollout, with the hand-written picks checked by select()."""
    turns = []
    if selector == "random":
        for t, (pub, priv) in enumerate(RANDOM_POOL[problem][chain], start=1):
            cands = [SimpleNamespace(public_passed=pub, private_passed=priv, sample_index=i) for i in range(3)]
            chosen = select("random", cands, seed=selection_seed(rollout_seed, t)).sample_index
            turns.append((t, [(pub, priv, 0.0)] * 3, chosen))
            if pub:
                break
    else:
        for t, chosen in enumerate(PICKS[selector][problem][chain], start=1):
            pool = POOL[problem][chain][t - 1]
            cands = [SimpleNamespace(public_passed=p, private_passed=q, score=s, sample_index=i)
                     for i, (p, q, s) in enumerate(pool)]
            assert select(selector, cands).sample_index == chosen, (selector, problem, chain, t)
            turns.append((t, pool, chosen))
        last_pick = POOL[problem][chain][len(turns) - 1][turns[-1][2]]
        assert last_pick[0] or len(turns) == 3, "a chain stops only at a public pass or at T"
        for _, pool, chosen in turns[:-1]:
            assert not pool[chosen][0], "a chain continued after a public pass"
    return turns


def _build(store):
    """Problems, models and one evaluation per selector (+ greedy) with their chains; returns {label: id}."""
    problems = {k: S.add_problem(store, f"mbpp/{900 + i}", split="test") for i, k in enumerate("AB")}
    gen = S.add_model(store, "gen")
    ver = S.add_model(store, "ver", kind="verifier")
    ids = {}
    for sel in ("random", "lv", "pt", "pt+lv"):
        ev = store.create_evaluation(f"eval/{sel}", generator_id=gen, dataset="mbpp", split="test", mode="bon",
                                     selector=sel, verifier_id=ver, num_candidates=3, num_chains=2, max_turns=3)
        ids[sel] = ev
        for key, pid in problems.items():
            for chain in (0, 1):
                turns = _chain_turns(sel, key, chain, 1000 + chain)
                specs = [{"candidates": [{"response": f"{sel}-{key}-{chain}-{t}-{i}", "public": p, "private": q,
                                          "scores": {ver: s}} for i, (p, q, s) in enumerate(pool)],
                          "chosen": chosen} for t, pool, chosen in turns]
                S.add_rollout(store, problem_id=pid, sample_index=chain, turns=specs, evaluation_id=ev,
                              generator_id=gen)
    ev = store.create_evaluation("eval/greedy", generator_id=gen, dataset="mbpp", split="test", mode="greedy",
                                 num_candidates=1, num_chains=1, max_turns=3)
    ids["greedy"] = ev
    for key, pid in problems.items():
        specs = []
        for t, (p, q) in enumerate(GREEDY[key], start=1):
            specs.append({"response": f"greedy-{key}-{t}", "public": p, "private": q})
            if p:
                break
        S.add_rollout(store, problem_id=pid, sample_index=0, turns=specs, evaluation_id=ev, generator_id=gen)
    return ids, problems


def test_metrics_of_every_selector_match_hand_computed_values(store):
    from workers.tasks.rounds import finalize_evaluation

    ids, _ = _build(store)
    for label, ev_id in ids.items():
        metrics = finalize_evaluation(store, ev_id)
        per_turn, false_public = EXPECTED[label]
        got = [(r["true_success"], r["public_success"], r["any_success"]) for r in metrics["per_turn"]]
        assert _flat(got) == pytest.approx(_flat(per_turn)), label
        assert metrics["true_success"] == pytest.approx(per_turn[-1][0])
        assert metrics["false_public"] == false_public, label
        assert metrics["problems"] == 2
        assert metrics["chains"] == (1 if label == "greedy" else 2) * 2
        ev = store.get_evaluation(ev_id)
        assert ev.status == "done" and ev.metrics["per_turn"] == metrics["per_turn"]
        # stored per problem, chain and turn: one row per executed turn, with the pick and cumulative solved
        rows = store.evaluation_results(ev_id)
        chains = PICKS.get(label)
        if label in PICKS:
            expected_rows = sum(len(chains[k][c]) for k in chains for c in chains[k])
            assert len(rows) == expected_rows
        for r in rows:
            assert r["candidate_id"] is not None
        # a chain's solved flag switches on at its first public pass, and only when that pick passed private
        by_chain: dict = {}
        for r in rows:
            by_chain.setdefault((r["problem_id"], r["chain_index"]), []).append(r)
        for turns in by_chain.values():
            first = next((r for r in turns if r["public_passed"]), None)
            for r in turns:
                want = first is not None and first["private_passed"] and r["turn_index"] >= first["turn_index"]
                assert r["solved"] is want
    # idempotent: finishing again writes nothing new and returns the same numbers
    again = finalize_evaluation(store, ids["pt+lv"])
    assert again["per_turn"] == store.get_evaluation(ids["pt+lv"]).metrics["per_turn"]
    assert len(store.evaluation_results(ids["pt+lv"])) == 7
    # the dashboard's SQL over the same rows agrees with the metrics
    dash = store.dash_eval_turn_success()
    for label, ev_id in ids.items():
        mine = store.get_evaluation(ev_id).metrics["per_turn"]
        theirs = sorted((r for r in dash if r["evaluation_id"] == ev_id), key=lambda r: r["turn"])
        assert _flat((r["true_success"], r["public_success"], r["any_success"]) for r in theirs) == pytest.approx(
            _flat((r["true_success"], r["public_success"], r["any_success"]) for r in mine)), label


def test_an_unfinished_evaluation_is_not_finalized(store):
    from workers.tasks.rounds import finalize_evaluation

    pid = S.add_problem(store, "mbpp/950", split="test")
    gen = S.add_model(store, "gen")
    ev = store.create_evaluation("eval/partial", generator_id=gen, dataset="mbpp", split="test", mode="greedy",
                                 max_turns=3)
    S.add_rollout(store, problem_id=pid, sample_index=0, evaluation_id=ev, generator_id=gen, done=False,
                  turns=[{"response": "x", "public": False, "private": False}])
    assert finalize_evaluation(store, ev) is None
    assert store.evaluation_results(ev) == []
    assert store.get_evaluation(ev).status == "pending"


# -- the pure functions ---------------------------------------------------------------------------------------
def P(problem, chain, turn, pub, priv):
    return E.Pick(problem, chain, turn, pub, priv)


def test_a_false_public_pass_is_never_rescued():
    # public_and_private stop rule: the chain went on after a public pass that failed private, then solved it
    picks = [P(1, 0, 1, True, False), P(1, 0, 2, True, True)]
    m = E.compute_metrics(picks, 3)
    assert [r["true_success"] for r in m["per_turn"]] == [0.0, 0.0, 0.0]
    assert [r["public_success"] for r in m["per_turn"]] == [1.0, 1.0, 1.0]
    assert m["false_public"] == 1
    assert [r["solved"] for r in E.result_rows(picks)] == [False, False]


def test_carry_forward_and_any_of_chains():
    picks = [
        P(1, 0, 1, False, False), P(1, 0, 2, True, True),  # solved at 2
        P(1, 1, 1, False, False), P(1, 1, 2, False, False), P(1, 1, 3, False, False),  # never
        P(2, 0, 1, True, True),  # solved at 1, keeps it at 2 and 3
        P(2, 1, 1, True, False),  # false public
    ]
    m = E.compute_metrics(picks, 3, expected_problems=2, expected_chains=2)
    assert [r["true_success"] for r in m["per_turn"]] == [0.25, 0.5, 0.5]
    assert [r["public_success"] for r in m["per_turn"]] == [0.5, 0.75, 0.75]
    assert [r["any_success"] for r in m["per_turn"]] == [0.5, 1.0, 1.0]
    assert m["mean_turns"] == pytest.approx(7 / 4)
    rows = E.result_rows(picks)
    assert [(r["problem_id"], r["chain_index"], r["turn_index"], r["solved"]) for r in rows] == [
        (1, 0, 1, False), (1, 0, 2, True), (1, 1, 1, False), (1, 1, 2, False), (1, 1, 3, False),
        (2, 0, 1, True), (2, 1, 1, False)]


def test_incomplete_or_inconsistent_results_are_errors():
    picks = [P(1, 0, 1, True, True)]
    with pytest.raises(ValueError, match="expected 2"):
        E.compute_metrics(picks, 3, expected_problems=2)
    with pytest.raises(ValueError, match="chains"):
        E.compute_metrics(picks, 3, expected_chains=2)
    with pytest.raises(ValueError, match="two picks"):
        E.compute_metrics([P(1, 0, 1, False, False), P(1, 0, 1, True, True)], 3)
    with pytest.raises(ValueError, match="more than 1"):
        E.compute_metrics([P(1, 0, 1, False, False), P(1, 0, 2, True, True)], 1)
    assert E.compute_metrics([], 2)["per_turn"][0]["true_success"] == 0.0


def test_labels_and_percent():
    assert E.percent(0.5123) == "51.2"
    assert E.label("bon", "pt+lv", 5, 10) == "BoN N=5 C=10 pt+lv"
    assert E.label("greedy", None, 1, 1) == "greedy (T=0)"
