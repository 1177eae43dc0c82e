"""The message history of a trajectory (docs/method.md §1, "Messages").

Turn 1 sees one user message with the problem prompt. After each assistant turn the history gets the assistant's
raw response (prose and fences, not only the extracted code) and a user message ``"Feedback: " + feedback``
with the public feedback of that turn. There is no system message (a model's chat template may still add its own
default one when the conversation is rendered; that is the template's behaviour, not ours).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.env.prompt import build_prompt

FEEDBACK_PREFIX = "Feedback: "

Message = dict[str, str]


def initial_messages(problem: Any) -> list[Message]:
    """The messages of turn 1: a single user message with the problem prompt."""
    return [{"role": "user", "content": build_prompt(problem)}]


def append_turn(messages: Sequence[Message], response: str, feedback: str) -> list[Message]:
    """A new list: ``messages`` + the assistant's raw ``response`` + ``"Feedback: " + feedback``.

    ``messages`` is not modified (the stored messages of earlier turns stay as they were shown).
    """
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("append_turn expects a history that ends with a user message")
    return [
        *(dict(m) for m in messages),
        {"role": "assistant", "content": response},
        {"role": "user", "content": FEEDBACK_PREFIX + feedback},
    ]


def messages_for_turn(problem: Any, history: Sequence[tuple[str, str]]) -> list[Message]:
    """The messages turn ``len(history) + 1`` sees, from the (response, feedback) pairs of earlier turns."""
    messages = initial_messages(problem)
    for response, feedback in history:
        messages = append_turn(messages, response, feedback)
    return messages
