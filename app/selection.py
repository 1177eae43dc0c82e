"""Best-of-N selectors (docs/method.md §7): which of a turn's N candidates a chain keeps.

| selector | rule |
|---|---|
| ``random`` | one at random, seeded (the same seed always picks the same candidate) |
| ``lv``     | highest verifier score |
| ``pt``     | first candidate that passes the public tests, else the first candidate |
| ``pt+lv``  | ``100 * public_pass + score``: best-scored public-passing candidate, else best-scored overall |
| ``oracle`` | first candidate that passes the private tests, else as ``pt`` (an upper bound, never a result) |
| ``first``  | the first candidate (N = 1, greedy) |

Candidates are any objects with ``sample_index``, ``public_passed``, ``private_passed`` and (for ``lv`` and
``pt+lv``) ``score``. "First" means lowest ``sample_index``; ties in score go to the lowest index too, so a
selection is a pure function of the stored rows.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

SELECTORS = ("random", "lv", "pt", "pt+lv", "oracle", "first")
NEEDS_SCORES = frozenset({"lv", "pt+lv"})


class SelectionError(ValueError):
    pass


def needs_scores(selector: str | None) -> bool:
    return (selector or "first") in NEEDS_SCORES


def selection_seed(rollout_seed: int, turn_index: int) -> int:
    """The seed of the ``random`` selector at one turn of one chain."""
    digest = hashlib.sha256(f"select/{int(rollout_seed)}/{int(turn_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _score(c: Any) -> float:
    s = getattr(c, "score", None)
    if s is None:
        raise SelectionError(f"candidate {getattr(c, 'id', c)!r} has no verifier score")
    return float(s)


def select(selector: str | None, candidates: Sequence[Any], *, seed: int | None = None) -> Any:
    """The chosen candidate among ``candidates`` (all executed; scored when the selector needs scores)."""
    selector = selector or "first"
    if selector not in SELECTORS:
        raise SelectionError(f"unknown selector {selector!r}; choose one of {', '.join(SELECTORS)}")
    if not candidates:
        raise SelectionError("nothing to select from")
    ordered = sorted(candidates, key=lambda c: c.sample_index)
    if len(ordered) == 1 or selector == "first":
        return ordered[0]
    if selector == "random":
        if seed is None:
            raise SelectionError("the random selector needs a seed")
        return ordered[random.Random(seed).randrange(len(ordered))]
    if selector == "pt":
        return next((c for c in ordered if c.public_passed), ordered[0])
    if selector == "oracle":
        return next((c for c in ordered if c.private_passed), None) or next(
            (c for c in ordered if c.public_passed), ordered[0]
        )
    if selector == "lv":
        key = _score
    else:  # pt+lv

        def key(c: Any) -> float:
            return 100.0 * bool(c.public_passed) + _score(c)

    best = ordered[0]
    best_key = key(best)
    for c in ordered[1:]:
        k = key(c)
        if k > best_key:  # strict: ties keep the lowest sample index
            best, best_key = c, k
    return best
