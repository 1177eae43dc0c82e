"""A store with fixed evaluation outcomes for the report and frames tests: two experiments of one group.

A chain is written as a string of turns: ``S`` = the pick passes the public and the private tests, ``X`` = it
passes the public tests only (a false public pass), ``F`` = it fails the public tests. Every evaluation is
finalized by the real code path (``finalize_evaluation``), which writes ``evaluation_results`` and the metrics.

- ``grp-mucode`` (method mucode): round 0 evaluates G0 with RM0, round 1 G1 with RM1; round 0 also has two
  training rollouts with verifier scores.
- ``grp-multi_rft`` (method multi_rft): round 1 evaluates its G1 with its RM1, on MBPP problems 0-3 and one
  problem (5) the µCode experiment never saw; one more evaluation is left unfinished.
Greedy chains run under the public-and-private stop rule and count on the last turn (``XS`` is solved at turn
2), Best-of-N chains count at their first public pass.
"""

from __future__ import annotations

from typing import Any

from tests.helpers import seed as S

VERDICT = {"S": (True, True), "X": (True, False), "F": (False, False)}

MBPP = [f"mbpp/{11 + i}" for i in range(6)]
HE = [f"HumanEval/{i}" for i in range(3)]

# OUTCOMES[(experiment, generator)][(dataset, mode)] = {problem external id: [chain, ...]}
OUTCOMES: dict[tuple[str, str], dict[tuple[str, str], dict[str, list[str]]]] = {
    ("grp-mucode", "G0"): {
        ("mbpp", "greedy"): {MBPP[0]: ["S"], MBPP[1]: ["FS"], MBPP[2]: ["FFF"], MBPP[3]: ["X"], MBPP[4]: ["XS"]},
        ("mbpp", "bon"): {MBPP[0]: ["S", "FS"], MBPP[1]: ["FFF", "FFS"], MBPP[2]: ["FFF", "FFF"],
                          MBPP[3]: ["X", "S"], MBPP[4]: ["S", "S"]},
        ("humaneval", "greedy"): {HE[0]: ["S"], HE[1]: ["FFF"], HE[2]: ["FFS"]},
        ("humaneval", "bon"): {HE[0]: ["S", "S"], HE[1]: ["FFF", "X"], HE[2]: ["FS", "FFF"]},
    },
    ("grp-mucode", "G1"): {
        ("mbpp", "greedy"): {MBPP[0]: ["S"], MBPP[1]: ["S"], MBPP[2]: ["FFS"], MBPP[3]: ["X"], MBPP[4]: ["S"]},
        ("mbpp", "bon"): {MBPP[0]: ["S", "S"], MBPP[1]: ["FS", "S"], MBPP[2]: ["FFS", "FFF"],
                          MBPP[3]: ["FS", "S"], MBPP[4]: ["S", "FS"]},
        ("humaneval", "greedy"): {HE[0]: ["S"], HE[1]: ["FS"], HE[2]: ["FFS"]},
        ("humaneval", "bon"): {HE[0]: ["S", "S"], HE[1]: ["FS", "X"], HE[2]: ["S", "FFF"]},
    },
    ("grp-multi_rft", "G1"): {
        ("mbpp", "greedy"): {MBPP[0]: ["S"], MBPP[1]: ["FFF"], MBPP[2]: ["FFF"], MBPP[3]: ["X"], MBPP[5]: ["S"]},
        ("mbpp", "bon"): {MBPP[0]: ["S", "X"], MBPP[1]: ["FFF", "FS"], MBPP[2]: ["FFF", "FFF"],
                          MBPP[3]: ["S", "S"], MBPP[5]: ["S", "S"]},
        ("humaneval", "greedy"): {HE[0]: ["S"], HE[1]: ["FFF"], HE[2]: ["FFF"]},
        ("humaneval", "bon"): {HE[0]: ["S", "FFF"], HE[1]: ["FFF", "FFF"], HE[2]: ["FS", "FFF"]},
    },
}

# Training rollouts of grp-mucode round 0: (problem, turns) with a verifier score per pick.
TRAIN = [(MBPP[0], "FS"), (MBPP[1], "FFF")]


def chain_turns(chain: str, tag: str, verifier_id: int | None) -> list[dict[str, Any]]:
    """Turn specs for ``seed.add_rollout``: two candidates per turn, the first one chosen."""
    turns = []
    for t, ch in enumerate(chain, start=1):
        pub, priv = VERDICT[ch]
        scores = {verifier_id: 0.5 * t} if verifier_id else {}
        turns.append({"candidates": [
            {"response": f"{tag}-t{t}-pick", "public": pub, "private": priv, "scores": scores},
            {"response": f"{tag}-t{t}-other", "public": False, "private": False, "scores": scores},
        ], "chosen": 0})
    return turns


def build(store) -> dict[str, Any]:
    """Seed the store; returns ids: problems {external id: id}, evaluations {(exp, gen, dataset, mode): id},
    experiments {name: id}, the unfinished evaluation, the round-0 training rollouts."""
    from app.db import models as m
    from workers.tasks.rounds import finalize_evaluation

    problems = {ext: S.add_problem(store, ext, split="test") for ext in MBPP}
    problems |= {ext: S.add_problem(store, ext, dataset="humaneval", split="test") for ext in HE}
    base = S.add_model(store, "base")
    out: dict[str, Any] = {"problems": problems, "evaluations": {}, "experiments": {}}
    for exp, method in (("grp-mucode", "mucode"), ("grp-multi_rft", "multi_rft")):
        gens = [base, S.add_model(store, f"{exp}/G1"), S.add_model(store, f"{exp}/G2")]
        for k in (0, 1):
            rid = S.add_round(store, exp, k, method=method, generator_id=gens[k])
            ver = store.ensure_model_version(f"{exp}/RM{k}", "verifier", "tiny", "tiny", round_id=rid)
            store.set_round(rid, generator_out_id=gens[k + 1], verifier_out_id=ver, status="done")
            out[f"{exp}/r{k}"] = rid
            out[f"{exp}/RM{k}"] = ver
            for (dataset, mode), chains in OUTCOMES.get((exp, f"G{k}"), {}).items():
                c = max(len(v) for v in chains.values())
                metric = "last_turn" if mode == "greedy" else "first_public"
                ev = store.create_evaluation(
                    f"{exp}/r{k}/G{k}/{dataset}/{mode}", generator_id=gens[k], dataset=dataset, split="test",
                    mode=mode, selector="pt+lv" if mode == "bon" else None, verifier_id=ver,
                    num_candidates=2 if mode == "bon" else 1, num_chains=c, max_turns=3,
                    config={"metric": metric}, round_id=rid)  # fmt: skip
                for ext, cs in chains.items():
                    for ci, chain in enumerate(cs):
                        S.add_rollout(store, problem_id=problems[ext], sample_index=ci, evaluation_id=ev,
                                      generator_id=gens[k], turns=chain_turns(chain, f"{ev}-{ext}-{ci}", ver))
                assert finalize_evaluation(store, ev) is not None
                out["evaluations"][(exp, f"G{k}", dataset, mode)] = ev
        with store.session() as s:
            out["experiments"][exp] = s.query(m.Experiment).filter_by(name=exp).one().id
    # grp-mucode round 0: training rollouts scored by RM0
    out["train_rollouts"] = [
        S.add_rollout(store, problem_id=problems[ext], sample_index=i, round_id=out["grp-mucode/r0"],
                      generator_id=base, turns=chain_turns(chain, f"train-{i}", out["grp-mucode/RM0"]))
        for i, (ext, chain) in enumerate(TRAIN)
    ]
    # an evaluation that never finished: listed in the notes, not in the table
    out["pending"] = store.create_evaluation(
        "grp-multi_rft/r1/G1/mbpp/bon-lv", generator_id=base, dataset="mbpp", split="test", mode="bon",
        selector="lv", num_candidates=2, num_chains=2, max_turns=3, round_id=out["grp-multi_rft/r1"])
    return out


def per_problem(chains: list[str], t: int, metric: str) -> float:
    """By hand: the share of chains solved by turn t (``last_turn``: the last turn passes both suites)."""
    solved = 0
    for chain in chains:
        if metric == "last_turn":
            ok = chain[-1] == "S" and len(chain) <= t
        else:
            first = next((i for i, ch in enumerate(chain, start=1) if ch in "SX"), None)
            ok = first is not None and chain[first - 1] == "S" and first <= t
        solved += ok
    return solved / len(chains)
