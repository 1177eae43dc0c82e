"""When a trajectory stops, and its label (docs/method.md §1, "Oracle label and stop rule").

- ``public`` (default): stop at the first turn whose public tests pass, or after ``max_turns`` turns.
- ``public_and_private``: the reference code's rule (``success = public and private``), which lets a turn that
  passed the public tests but failed the private ones try again: an oracle leak on evaluation splits, kept
  only to reproduce the reference.

The oracle label of a trajectory is the private verdict of its last executed turn's chosen candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

StopRule = Literal["public", "public_and_private"]
STOP_RULES: tuple[str, ...] = get_args(StopRule)


def is_done(
    turn_index: int,
    max_turns: int,
    public_passed: bool | None,
    private_passed: bool | None = None,
    rule: StopRule = "public",
) -> bool:
    """Whether the trajectory ends after turn ``turn_index`` (1-based) with these verdicts.

    A verdict the rule needs but that is still unknown (``None``) raises, unless the turn budget alone
    already ends the trajectory.
    """
    if rule not in STOP_RULES:
        raise ValueError(f"unknown stop rule {rule!r} (expected one of {', '.join(STOP_RULES)})")
    if max_turns < 1 or turn_index < 1:
        raise ValueError("turn_index and max_turns are 1-based and positive")
    if turn_index > max_turns:
        raise ValueError(f"turn {turn_index} is past the last turn ({max_turns})")
    if turn_index == max_turns:
        return True
    if public_passed is None:
        raise ValueError("the public verdict is needed to decide whether to stop")
    if rule == "public":
        return bool(public_passed)
    if not public_passed:
        return False
    if private_passed is None:
        raise ValueError("the stop rule 'public_and_private' needs the private verdict")
    return bool(private_passed)


def trajectory_label(private_passed: Sequence[bool | None]) -> bool | None:
    """The oracle label: the private verdict of the last turn's chosen candidate, given the verdicts of the
    chosen candidates in turn order (``None`` while the last one is not executed yet)."""
    if not private_passed:
        raise ValueError("a trajectory has at least one turn")
    last = private_passed[-1]
    return None if last is None else bool(last)
