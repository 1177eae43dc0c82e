"""One rendering of chat messages into a model's text and tokens, for sampling, SFT and the verifier.

A chat template can print things that are not in the messages. Llama 3.x writes ``Today Date: <date>`` into its
default system header, and the date is the day the template runs unless the caller passes ``date_string``. If
sampling pinned it and training did not, the generator would be fine-tuned on prompts dated one day and sample
under prompts dated another, and the verifier would score a text the generator never saw. So every path renders
through ``render_chat``, with the same pinned template variables (``CHAT_TEMPLATE_KWARGS``), and a prompt renders
the same tokens whatever the day.

Tokens are the template's text tokenized without adding special tokens: the template writes its own BOS where
it wants one, so no second BOS sneaks in. No heavy imports: the tokenizer is whatever object the caller loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

# Template variables pinned for every rendering. Llama 3's own fallback date; templates that do not print a date
# ignore it.
CHAT_TEMPLATE_KWARGS: dict[str, Any] = {"date_string": "26 Jul 2024"}


@dataclass(frozen=True)
class ChatTokens:
    input_ids: list[int]
    # 1 for tokens the template marks as assistant text ({% generation %}), when asked for; None otherwise.
    assistant_mask: list[int] | None = None


@overload
def render_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool, tokenize: Literal[False],
    chat_template: str | None = None, assistant_mask: bool = False,
) -> str: ...


@overload
def render_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool, tokenize: Literal[True],
    chat_template: str | None = None, assistant_mask: bool = False,
) -> ChatTokens: ...


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool,
    tokenize: bool,
    chat_template: str | None = None,
    assistant_mask: bool = False,
) -> str | ChatTokens:
    """``messages`` through the tokenizer's chat template (or ``chat_template``) with the pinned variables.

    ``add_generation_prompt``: end with the header that opens an assistant turn (sampling, and the prompt part
    of an SFT example). ``tokenize=False`` returns the text; ``tokenize=True`` a ``ChatTokens`` with the ids,
    and with ``assistant_mask`` the template's assistant-token mask.
    """
    if not messages:
        raise ValueError("there are no messages to render")
    if not (chat_template or getattr(tokenizer, "chat_template", None)):
        raise ValueError("the model's tokenizer has no chat template")
    if assistant_mask and not tokenize:
        raise ValueError("the assistant mask needs tokenize=True")
    if not tokenize:
        return tokenizer.apply_chat_template(
            list(messages), chat_template=chat_template, tokenize=False,
            add_generation_prompt=add_generation_prompt, **CHAT_TEMPLATE_KWARGS,
        )  # fmt: skip
    enc = tokenizer.apply_chat_template(
        list(messages), chat_template=chat_template, tokenize=True, return_dict=True,
        add_generation_prompt=add_generation_prompt, return_assistant_tokens_mask=assistant_mask,
        **CHAT_TEMPLATE_KWARGS,
    )  # fmt: skip
    return ChatTokens(
        input_ids=[int(i) for i in enc["input_ids"]],
        assistant_mask=[int(x) for x in enc["assistant_masks"]] if assistant_mask else None,
    )
