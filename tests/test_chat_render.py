"""One chat rendering for sampling, SFT and the verifier, on a template that prints the date like Llama 3.x.

Llama 3.x's template writes ``Today Date: <date>`` into its default system header and takes the date from the
clock unless ``date_string`` is passed. Sampling, SFT and verifier tokenisation must render a conversation to
the same tokens, so the generator is trained on exactly the prompt it samples under.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.env.chat import CHAT_TEMPLATE_KWARGS, ChatTokens, render_chat
from tests.helpers.seed import PROMPT, STATE, TARGET

PINNED = CHAT_TEMPLATE_KWARGS["date_string"]

# The shape of Llama-3.2-Instruct's template (no tools): BOS, a default system header with the knowledge date
# and today's date (strftime_now when the caller passes no date_string), then header-delimited messages.
LLAMA_LIKE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}"
    "{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
    "{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


@pytest.fixture(scope="module")
def llama_tok(tiny_model_dir, tmp_path_factory):
    """The tiny tokenizer with Llama 3's header and end-of-turn special tokens and the Llama-like template,
    saved and loaded back through ``from_pretrained`` like any model's tokenizer."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Llama 3's pre-tokenizer split: a run of newlines is its own piece, so the "\n\n" that ends the generation
    # prompt is the same token whether or not a response follows it (as with the real tokenizer).
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tok.eos_token = "<|eot_id|>"
    tok.chat_template = LLAMA_LIKE
    out = tmp_path_factory.mktemp("llama-like-tokenizer")
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def _today() -> set[str]:
    return {time.strftime("%d %b %Y")}


def _date_lines(tok, ids: list[int]) -> list[str]:
    return [ln for ln in tok.decode(ids).splitlines() if ln.startswith("Today Date:")]


def test_the_template_prints_todays_date_unless_pinned(llama_tok):
    """The test template is date-sensitive (else the tests below could not fail): unpinned it prints today."""
    before = _today()
    raw = llama_tok.apply_chat_template(STATE, tokenize=False, add_generation_prompt=True)
    dates = before | _today()
    assert any(f"Today Date: {d}\n" in raw for d in dates)
    assert PINNED not in dates  # the pinned date is not today's, so a missed pin shows
    text = render_chat(llama_tok, STATE, add_generation_prompt=True, tokenize=False)
    assert f"Today Date: {PINNED}\n" in text
    assert text == raw.replace(next(d for d in dates if d in raw), PINNED)


def test_sampling_sft_and_verifier_render_the_same_date_line(llama_tok):
    from trainers.sft.trainer import tokenize_example
    from trainers.verifier.data import encode
    from workers.backends.base import render_prompt

    sampled = render_prompt(llama_tok, STATE)
    sft = tokenize_example(llama_tok, STATE + [{"role": "assistant", "content": TARGET}])
    verifier = encode(llama_tok, PROMPT, TARGET)
    expected = [f"Today Date: {PINNED}"]
    assert _date_lines(llama_tok, sampled) == expected
    assert _date_lines(llama_tok, sft.input_ids) == expected
    assert _date_lines(llama_tok, verifier) == expected
    # SFT trains the state on exactly the tokens sampling prompts with, and the loss starts right after them.
    first = next(i for i, lab in enumerate(sft.labels) if lab != -100)
    assert sft.input_ids[:first] == sampled and sft.prompt_is_prefix
    # The verifier's (first prompt, response) is the SFT rendering of the same two messages.
    two = tokenize_example(llama_tok, [STATE[0], {"role": "assistant", "content": TARGET}])
    assert verifier == two.input_ids
    assert verifier[: len(render_prompt(llama_tok, STATE[:1]))] == render_prompt(llama_tok, STATE[:1])


def test_sft_mask_covers_exactly_the_target_on_the_dated_template(llama_tok):
    from trainers.sft.trainer import tokenize_example

    out = tokenize_example(llama_tok, STATE + [{"role": "assistant", "content": TARGET}])
    assert out.method == "boundary"  # no {% generation %} markers in Llama's template
    eot = llama_tok.convert_tokens_to_ids("<|eot_id|>")
    labelled = [i for i, lab in zip(out.input_ids, out.labels, strict=True) if lab != -100]
    assert labelled == llama_tok(TARGET, add_special_tokens=False)["input_ids"] + [eot]
    assert out.labels[-1] == eot and out.input_ids[-1] == eot  # nothing after the target's end of turn
    assert out.input_ids.count(llama_tok.bos_token_id) == 1  # the template's BOS only


def test_render_chat_text_and_tokens_agree(llama_tok, tiny_model_dir):
    from transformers import AutoTokenizer

    for tok in (llama_tok, AutoTokenizer.from_pretrained(tiny_model_dir)):
        for gen in (True, False):
            text = render_chat(tok, STATE, add_generation_prompt=gen, tokenize=False)
            toks = render_chat(tok, STATE, add_generation_prompt=gen, tokenize=True)
            assert isinstance(toks, ChatTokens) and toks.assistant_mask is None
            assert toks.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    # The tiny ChatML template marks assistant text: the mask covers the assistant message and its <|im_end|>.
    tiny = AutoTokenizer.from_pretrained(tiny_model_dir)
    full = render_chat(tiny, STATE[:2], add_generation_prompt=False, tokenize=True, assistant_mask=True)
    marked = [i for i, m in zip(full.input_ids, full.assistant_mask, strict=True) if m]
    assert tiny.decode(marked) == STATE[1]["content"] + "<|im_end|>"


def test_render_chat_errors(llama_tok, tmp_path: Path):
    import copy

    with pytest.raises(ValueError, match="no messages"):
        render_chat(llama_tok, [], add_generation_prompt=True, tokenize=True)
    with pytest.raises(ValueError, match="assistant mask needs tokenize"):
        render_chat(llama_tok, STATE, add_generation_prompt=False, tokenize=False, assistant_mask=True)
    bare = copy.deepcopy(llama_tok)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        render_chat(bare, STATE, add_generation_prompt=True, tokenize=True)
    # An explicit template renders a tokenizer that has none.
    text = render_chat(bare, STATE[:1], add_generation_prompt=True, tokenize=False, chat_template=LLAMA_LIKE)
    assert f"Today Date: {PINNED}" in text
