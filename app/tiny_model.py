"""A tiny random Llama with a locally trained BPE tokenizer and a chat template, saved as a normal model folder.

Tests, benchmarks and GPU smoke checks load it through the same path as any real model (``from_pretrained`` on
a directory), so every code path is exercised without a model hub. Building takes a few seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_VERSION = "1"

# ChatML with the {% generation %} markers that make ``return_assistant_tokens_mask`` work. No system message
# is added: the protocol has none.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def _corpus() -> list[str]:
    # Python-looking text: our own sources plus the prompt wording, enough for a BPE of a few thousand merges.
    root = Path(__file__).resolve().parent
    texts = [p.read_text(errors="ignore") for p in sorted(root.rglob("*.py"))]
    texts.append(
        "Write a Python function implementation for the following prompt:\n\nYour code should satisfy "
        "these tests:\n\nassert f(1) == 2\n\nReturn only the implementation code, no tests or "
        "explanations. Be sure to include the relevant import statements:\n```python\ncode\n```\n"
        "Feedback: Code passed all tests\nAssertionError NameError TypeError\n"
    )
    return texts


def build_tiny_model(
    path: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random Llama to ``path`` (idempotent: an existing complete build is reused)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    stamp = path / "mucode_tiny.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("version") == TINY_VERSION:
        return path
    path.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",  # noqa: S106 - a special token, not a password
        eos_token="<|im_end|>",  # noqa: S106 - a special token, not a password
        pad_token="<|pad|>",  # noqa: S106 - a special token, not a password
        unk_token=None,
        model_max_length=4096,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    tok.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    stamp.write_text(json.dumps({"version": TINY_VERSION, "params": sum(p.numel() for p in model.parameters())}))
    return path
