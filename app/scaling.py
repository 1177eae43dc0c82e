"""Best-of-N scaling from stored candidates: the accuracy of picking among n <= N candidates, without sampling.

A Best-of-N evaluation stores, for every problem, chain and turn, the N candidates it sampled with their public
and private verdicts and verifier scores. At the **first turn** every chain of a problem starts from the same
prompt, so the problem's C x N first-turn candidates are independent draws from one distribution. The accuracy
of Best-of-n with a selector is the expected outcome of the candidate the selector picks among n fresh draws; a
uniformly random n-subset of the stored candidates is such a draw, so averaging the pick's outcome over *all*
n-subsets is an unbiased estimator (a U-statistic; the same argument as the combinatorial pass@k estimator),
and the one with the least variance among them. It is computed exactly, not by enumeration:

Sort the M candidates by the selector's preference (best first). The pick of a subset is its best-ranked
member, so the candidate at position j (1-based) is picked by ``C(M - j, n - 1)`` of the ``C(M, n)`` subsets:

    E_n = sum_j  C(M - j, n - 1) / C(M, n) * y_j

**Ties** (equal preference, e.g. two public passes under ``pt``, or equal scores): the selectors break them by
the lowest sample index, and the sample index of independent draws carries no information, so a tie is
resolved uniformly at random. In the formula, each tied candidate's outcome is replaced by the mean outcome of
its tie group: the positions a tie group occupies are picked with the same total probability whatever the order
inside it, and given that the pick is in the group, each member is equally likely.

Later turns are not covered: a turn-2 candidate was sampled from the state the N-candidate pick of turn 1
produced, and a pick among n < N candidates would have led to other states. The curve is therefore the
first-turn (single-turn) accuracy; for a single-turn evaluation that is the whole result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

ESTIMATOR = "unbiased subset estimator over the first turn's candidates (U-statistic over all n-subsets)"
# The selectors of app.selection, as a preference key (higher is preferred; equal keys are ties).
SCALING_SELECTORS = ("pt+lv", "lv", "pt", "random", "oracle")
SCORE_SELECTORS = frozenset({"pt+lv", "lv"})


def preference(selector: str, public_passed: bool, private_passed: bool, score: float | None) -> float:
    """The key ``app.selection.select`` maximises (``first`` and ``random``: every candidate ties)."""
    if selector == "pt+lv":
        if score is None:
            raise ValueError("the pt+lv selector needs a verifier score")
        return 100.0 * bool(public_passed) + float(score)
    if selector == "lv":
        if score is None:
            raise ValueError("the lv selector needs a verifier score")
        return float(score)
    if selector == "pt":
        return float(bool(public_passed))
    if selector == "oracle":  # the first private pass, else the first public pass, else the first
        return 2.0 if private_passed else (1.0 if public_passed else 0.0)
    if selector in ("random", "first"):
        return 0.0
    raise ValueError(f"unknown selector {selector!r}; choose one of {', '.join(SCALING_SELECTORS)}")


@lru_cache(maxsize=256)
def pick_weights(m: int, max_n: int) -> np.ndarray:
    """``W[n - 1, j - 1] = C(m - j, n - 1) / C(m, n)``: the probability that the candidate at position j of
    m (best first) is the pick of a uniformly random n-subset, for n = 1..max_n."""
    if m < 1 or not 1 <= max_n <= m:
        raise ValueError(f"need 1 <= n <= m candidates (m={m}, n={max_n})")
    w = np.zeros((max_n, m))
    for n in range(1, max_n + 1):
        total = math.comb(m, n)
        for j in range(1, m - n + 2):  # positions past m - n + 1 are never the best of n
            w[n - 1, j - 1] = math.comb(m - j, n - 1) / total
    w.flags.writeable = False
    return w


def tie_averaged(keys: Sequence[float], outcomes: Sequence[float]) -> np.ndarray:
    """Outcomes sorted by ``keys`` (descending), each replaced by the mean outcome of its tie group."""
    k = np.asarray(keys, dtype=float)
    y = np.asarray(outcomes, dtype=float)
    if k.shape != y.shape or k.ndim != 1:
        raise ValueError("keys and outcomes must be two sequences of the same length")
    order = np.argsort(-k, kind="stable")
    k, y = k[order], y[order]
    out = y.copy()
    start = 0
    for i in range(1, len(k) + 1):
        if i == len(k) or k[i] != k[start]:
            out[start:i] = y[start:i].mean()
            start = i
    return out


def best_of_n(keys: Sequence[float], outcomes: Sequence[float], max_n: int | None = None) -> np.ndarray:
    """Expected outcome of the selector's pick among n random candidates of these, for n = 1..max_n (default:
    all of them). ``keys``: the selector's preference per candidate (higher wins; ties are resolved at random);
    ``outcomes``: 1/0 (or any number) per candidate."""
    y = tie_averaged(keys, outcomes)
    if max_n is None:
        max_n = len(y)
    return pick_weights(len(y), int(max_n)) @ y


@dataclass
class ScalingCurve:
    """Per-problem estimates ``values[problem] = [E_1, ..., E_max_n]`` and what was left out."""

    selector: str
    max_n: int
    values: dict[Any, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # why -> problems

    def at(self, n: int) -> list[float]:
        """Each problem's estimate for Best-of-``n`` (the values to bootstrap over problems)."""
        return [float(v[n - 1]) for _, v in sorted(self.values.items(), key=lambda kv: repr(kv[0]))]

    def mean(self) -> np.ndarray:
        if not self.values:
            return np.full(self.max_n, np.nan)
        return np.mean(np.stack(list(self.values.values())), axis=0)


def first_turn_outcome(public_passed: bool | None, private_passed: bool | None) -> float:
    """What the curve counts: a first-turn pick is a success when it passes the public and the private tests
    (a chain is solved at its first public pass iff that pick also passes the private tests)."""
    return float(bool(public_passed) and bool(private_passed))


def scaling_curve(rows: Iterable[Mapping[str, Any]], selector: str, max_n: int) -> ScalingCurve:
    """The Best-of-n curve (n = 1..``max_n``) per problem from stored first-turn candidates.

    ``rows``: one per candidate with ``problem_id``, ``public_passed``, ``private_passed`` and ``score`` (the
    evaluation's verifier; needed by ``pt+lv`` and ``lv``). The candidates of all chains of a problem are
    pooled. A problem is left out when a candidate is not executed (or not scored, for a score selector), or
    when it has fewer than ``max_n`` candidates; ``skipped`` counts them by reason.
    """
    if selector not in SCALING_SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; choose one of {', '.join(SCALING_SELECTORS)}")
    if max_n < 1:
        raise ValueError("max_n must be >= 1")
    by_problem: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], []).append(r)
    curve = ScalingCurve(selector, int(max_n))

    def skip(why: str) -> None:
        curve.skipped[why] = curve.skipped.get(why, 0) + 1

    for pid, cands in by_problem.items():
        if any(c["public_passed"] is None or c["private_passed"] is None for c in cands):
            skip("not executed")
            continue
        if selector in SCORE_SELECTORS and any(c.get("score") is None for c in cands):
            skip("not scored")
            continue
        if len(cands) < max_n:
            skip(f"fewer than {max_n} candidates")
            continue
        keys = [preference(selector, c["public_passed"], c["private_passed"], c.get("score")) for c in cands]
        ys = [first_turn_outcome(c["public_passed"], c["private_passed"]) for c in cands]
        curve.values[pid] = best_of_n(keys, ys, max_n)
    return curve
