"""Evaluation metrics of multi-turn chains (docs/method.md §7), as pure functions over stored picks.

An evaluation runs C independent *chains* per problem for up to T turns. At each turn a chain keeps one
*pick* (greedy: the only sample; Best-of-N: the selector's choice among N candidates), executes it, and feeds
back its public feedback. The input here is one row per (problem, chain, executed turn) with the pick's
public and private verdicts; nothing else is needed.

Rules (evaluate_beam_search.py:40-86, kept exactly):
- A chain is *done* at its first turn whose pick passes the public tests; it is *solved* iff that pick also
  passes the private tests. A false public pass is never rescued by a later turn (this also holds when the
  chain kept going because of a ``public_and_private`` stop rule).
- **True success at turn t** (the accuracy per turn): share of (problem, chain) pairs solved at a turn <= t.
  True success at T is the headline number (BoN@T; for greedy, pass@1 with T turns).
- **Public success at turn t**: share of chains whose pick passed the public tests at some turn <= t.
- **Any success at turn t**: share of problems that at least one of their chains solved by turn t.
A chain that stopped early keeps its outcome for the later turns. Averages are over problems x chains.

Greedy chains can also be counted as the reference counts its greedy N=1 numbers (``metric="last_turn"``): a
chain is solved iff its *last executed* pick passes the public and the private tests, the chain having run under
the rollout stop rule. With the ``public`` stop rule both counts are equal; with ``public_and_private`` a chain
whose first public pass failed the private tests goes on, and a later correct turn counts under ``last_turn``
only. ``compute_metrics`` reports both (``first_public_success``, ``last_turn_success``); ``true_success``
follows the metric it is given.

``result_rows`` gives the ``evaluation_results`` rows (one per executed turn, with ``solved`` cumulative per
chain), ``compute_metrics`` the numbers. Both are used by the store writer and recomputed by the tests.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CHAIN_METRICS = ("first_public", "last_turn")


@dataclass(frozen=True)
class Pick:
    """The pick of one chain at one turn."""

    problem_id: int
    chain_index: int
    turn_index: int  # 1-based
    public_passed: bool
    private_passed: bool
    candidate_id: int | None = None


@dataclass(frozen=True)
class ChainOutcome:
    problem_id: int
    chain_index: int
    turns: int  # executed turns
    first_public: int | None  # turn of the first public pass
    solved_at: int | None  # = first_public when that pick passed the private tests, else None
    # The last executed turn when its pick passed the public and the private tests, else None (the reference's
    # greedy label: the success of the last turn under the stop rule the chain ran with).
    last_turn_solved_at: int | None = None

    @property
    def solved(self) -> bool:
        return self.solved_at is not None

    def solved_turn(self, metric: str = "first_public") -> int | None:
        """The turn from which the chain counts as solved under ``metric`` (None: never)."""
        return self.solved_at if _check_metric(metric) == "first_public" else self.last_turn_solved_at

    @property
    def false_public(self) -> bool:
        """Its first public pass failed the private tests."""
        return self.first_public is not None and self.solved_at is None


def _as_pick(row: Pick | Mapping[str, Any]) -> Pick:
    if isinstance(row, Pick):
        return row
    return Pick(
        problem_id=int(row["problem_id"]),
        chain_index=int(row["chain_index"]),
        turn_index=int(row["turn_index"]),
        public_passed=bool(row["public_passed"]),
        private_passed=bool(row["private_passed"]),
        candidate_id=row.get("candidate_id"),
    )


def _chains(picks: Iterable[Pick | Mapping[str, Any]]) -> dict[tuple[int, int], list[Pick]]:
    chains: dict[tuple[int, int], list[Pick]] = defaultdict(list)
    for row in picks:
        p = _as_pick(row)
        chains[(p.problem_id, p.chain_index)].append(p)
    for key, turns in chains.items():
        turns.sort(key=lambda p: p.turn_index)
        indexes = [p.turn_index for p in turns]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"chain {key}: two picks for one turn ({indexes})")
    return chains


def chain_outcome(turns: Sequence[Pick]) -> ChainOutcome:
    """The outcome of one chain from its picks (in any order)."""
    turns = sorted(turns, key=lambda p: p.turn_index)
    if not turns:
        raise ValueError("a chain needs at least one pick")
    first = next((p for p in turns if p.public_passed), None)
    last = turns[-1]
    return ChainOutcome(
        problem_id=turns[0].problem_id,
        chain_index=turns[0].chain_index,
        turns=len(turns),
        first_public=first.turn_index if first else None,
        solved_at=first.turn_index if first is not None and first.private_passed else None,
        last_turn_solved_at=last.turn_index if last.public_passed and last.private_passed else None,
    )


def _check_metric(metric: str) -> str:
    if metric not in CHAIN_METRICS:
        raise ValueError(f"unknown chain metric {metric!r} (expected one of {', '.join(CHAIN_METRICS)})")
    return metric


def chain_outcomes(picks: Iterable[Pick | Mapping[str, Any]]) -> list[ChainOutcome]:
    return [chain_outcome(turns) for _, turns in sorted(_chains(picks).items())]


def result_rows(picks: Iterable[Pick | Mapping[str, Any]], metric: str = "first_public") -> list[dict[str, Any]]:
    """``evaluation_results`` rows: one per pick, ``solved`` = the chain is solved (under ``metric``) at or
    before this turn."""
    _check_metric(metric)
    out: list[dict[str, Any]] = []
    for _, turns in sorted(_chains(picks).items()):
        oc = chain_outcome(turns)
        solved_at = oc.solved_turn(metric)
        for p in turns:
            out.append(
                {
                    "problem_id": p.problem_id,
                    "chain_index": p.chain_index,
                    "turn_index": p.turn_index,
                    "candidate_id": p.candidate_id,
                    "public_passed": p.public_passed,
                    "private_passed": p.private_passed,
                    "solved": solved_at is not None and p.turn_index >= solved_at,
                }
            )
    return out


def compute_metrics(
    picks: Iterable[Pick | Mapping[str, Any]],
    max_turns: int,
    *,
    metric: str = "first_public",
    expected_problems: int | None = None,
    expected_chains: int | None = None,
) -> dict[str, Any]:
    """Per-turn true/public/any success and the counts behind them; ``true_success`` (and ``any_success``)
    count a chain as ``metric`` says, and both chain metrics are reported side by side.

    ``expected_problems`` / ``expected_chains`` (C per problem) are checked when given: an evaluation whose
    rows do not cover every (problem, chain) is incomplete, and its numbers would be wrong.
    """
    if max_turns < 1:
        raise ValueError("max_turns must be >= 1")
    _check_metric(metric)
    outcomes = chain_outcomes(picks)
    problems = sorted({o.problem_id for o in outcomes})
    per_problem: dict[int, list[ChainOutcome]] = defaultdict(list)
    for o in outcomes:
        per_problem[o.problem_id].append(o)
    if expected_problems is not None and len(problems) != expected_problems:
        raise ValueError(f"results cover {len(problems)} problems, expected {expected_problems}")
    if expected_chains is not None:
        short = {p: len(cs) for p, cs in per_problem.items() if len(cs) != expected_chains}
        if short:
            raise ValueError(f"problems without exactly {expected_chains} chains: {dict(list(short.items())[:5])}")
    too_long = [o for o in outcomes if o.turns > max_turns]
    if too_long:
        raise ValueError(f"chain {too_long[0].problem_id}/{too_long[0].chain_index} has more than {max_turns} turns")
    n_chains = len(outcomes)
    n_problems = len(problems)

    def by(o: ChainOutcome, m: str, t: int) -> bool:  # solved by turn t under metric m
        turn = o.solved_turn(m)
        return turn is not None and turn <= t

    per_turn = []
    for t in range(1, max_turns + 1):
        solved = sum(1 for o in outcomes if by(o, metric, t))
        public = sum(1 for o in outcomes if o.first_public is not None and o.first_public <= t)
        any_solved = sum(1 for cs in per_problem.values() if any(by(o, metric, t) for o in cs))
        per_turn.append(
            {
                "turn": t,
                "solved": solved,
                "public": public,
                "any_solved": any_solved,
                "true_success": _share(solved, n_chains),
                "public_success": _share(public, n_chains),
                "any_success": _share(any_solved, n_problems),
                **{f"{m}_success": _share(sum(1 for o in outcomes if by(o, m, t)), n_chains) for m in CHAIN_METRICS},
            }
        )
    last = per_turn[-1]
    return {
        "problems": n_problems,
        "chains": n_chains,
        "chains_per_problem": (n_chains / n_problems) if n_problems else 0,
        "max_turns": max_turns,
        "metric": metric,
        "per_turn": per_turn,
        "true_success": last["true_success"],
        **{f"{m}_success": last[f"{m}_success"] for m in CHAIN_METRICS},
        "public_success": last["public_success"],
        "any_success": last["any_success"],
        "false_public": sum(1 for o in outcomes if o.false_public),
        "mean_turns": (sum(o.turns for o in outcomes) / n_chains) if n_chains else 0.0,
    }


def _share(k: int, n: int) -> float:
    return k / n if n else 0.0


def percent(x: float | None) -> str:
    """``0.5123`` -> ``"51.2"`` (the paper's tables are percentages with one decimal)."""
    return "–" if x is None else f"{100.0 * x:.1f}"


def label(mode: str, selector: str | None, num_candidates: int, num_chains: int) -> str:
    """A row label as in the paper: ``greedy`` or ``BoN N=5 C=10 pt+lv``."""
    if mode == "greedy":
        return "greedy (T=0)" if num_chains == 1 else f"greedy C={num_chains}"
    return f"BoN N={num_candidates} C={num_chains} {selector or 'first'}"
