"""Sampling backends on the tiny random Llama: batching, token counts, finish reasons, per-sample seeds."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from tests.helpers.models import CONVS, RAMBLING, conv, rambling_model_dir
from workers.backends import registry
from workers.backends.base import SamplingParams, render_prompt, sample_seed
from workers.backends.transformers_backend import (
    TransformersBackend,
    _make_sampler,
    step_keys,
    token_uniform_reference,
    token_uniforms,
)


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return TransformersBackend(str(tiny_model_dir), device="cpu")


def texts(groups):
    return [[s.text for s in g] for g in groups]


# -- shapes, counts, finish reasons ---------------------------------------------------------------------
def test_batched_generation_shapes_and_prompt_counts(backend):
    params = SamplingParams(temperature=0.7, top_p=1.0, max_tokens=12, n=2)
    out = backend.generate(CONVS, params, seeds=[1, 2, 3])
    assert [len(g) for g in out] == [2, 2, 2]
    for c, group in zip(CONVS, out, strict=True):
        for s in group:
            assert s.prompt_tokens == len(render_prompt(backend.tokenizer, c))
            assert 1 <= s.completion_tokens <= 12
            assert s.finish_reason in ("stop", "length")
    assert [s.seed for s in out[1]] == [sample_seed(2, 0), sample_seed(2, 1)]
    assert out[1][0].seed == 2
    # Different prompts are padded to one batch: lengths differ, so left padding was exercised.
    assert len({g[0].prompt_tokens for g in out}) == 3


def test_finish_reason_stop_vs_length_and_token_counts(backend, tiny_model_dir, tmp_path):
    """Make a token the model really produces an end-of-turn token: the response ends right there."""
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=16)
    seeds = [11, 12, 13]
    base = backend.generate(CONVS, params, seeds)
    ids = [backend.tokenizer(g[0].text, add_special_tokens=False)["input_ids"] for g in base]
    assert all(g[0].finish_reason == "length" and g[0].completion_tokens == 16 for g in base)
    # A token that row 0 emits (first at position k > 0) and that row 1 never emits.
    gen0 = _generated_ids(backend, CONVS[0], params, seeds[0])
    gen1 = _generated_ids(backend, CONVS[1], params, seeds[1])
    k, stop_id = next((k, t) for k, t in enumerate(gen0) if k > 0 and t not in gen0[:k] and t not in gen1)
    variant = tmp_path / "tiny-extra-eos"
    shutil.copytree(tiny_model_dir, variant)
    gc_path = variant / "generation_config.json"
    gc = json.loads(gc_path.read_text())
    gc["eos_token_id"] = [backend.tokenizer.eos_token_id, stop_id]
    gc_path.write_text(json.dumps(gc))
    stopping = TransformersBackend(str(variant), device="cpu")
    out = stopping.generate(CONVS[:2], params, seeds[:2])
    assert out[0][0].finish_reason == "stop"
    assert out[0][0].completion_tokens == k + 1  # the stop token counts as generated
    assert out[0][0].text == backend.tokenizer.decode(gen0[:k], skip_special_tokens=True)
    assert out[1][0].finish_reason == "length" and out[1][0].completion_tokens == 16
    assert out[1][0].text == base[1][0].text
    assert ids  # decoded text re-tokenizes (sanity)


def _generated_ids(backend, conversation, params, seed):
    import torch
    from transformers import LogitsProcessorList

    prompt = torch.tensor([render_prompt(backend.tokenizer, conversation)])
    keys = torch.from_numpy(step_keys([seed], params.max_tokens).view("int32"))
    sampler = _make_sampler(keys, prompt.shape[1], params.temperature, params.top_p)
    with torch.inference_mode():
        out = backend.model.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=params.max_tokens,
            do_sample=False, logits_processor=LogitsProcessorList([sampler]),
        )  # fmt: skip
    return out[0, prompt.shape[1] :].tolist()


# -- determinism ----------------------------------------------------------------------------------------
def test_same_seeds_same_samples_across_calls_and_batch_compositions(backend):
    params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=24)
    first = texts(backend.generate(CONVS, params, [1, 2, 3]))
    assert texts(backend.generate(CONVS, params, [1, 2, 3])) == first
    # Another batch: other neighbours, other rows, another padding width.
    regrouped = texts(backend.generate([CONVS[2], CONVS[0]], params, [3, 1]))
    assert regrouped == [first[2], first[0]]
    alone = texts(backend.generate([CONVS[1]], params, [2]))
    assert alone == [first[1]]
    # Same prompt with other neighbours repeated many times.
    crowd = texts(backend.generate([CONVS[2]] * 5 + [CONVS[1]], params, [7, 8, 9, 10, 11, 2]))
    assert crowd[-1] == first[1]
    # A prompt repeated in the batch (its prefill is shared) samples as it does alone.
    assert crowd[3] == texts(backend.generate([CONVS[2]], params, [10]))[0]
    # Seeds matter: different seeds give different samples of one prompt.
    assert len({t[0] for t in crowd[:5]}) > 1


def test_n_samples_equal_separate_requests_with_derived_seeds(backend):
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=16, n=3)
    grouped = texts(backend.generate([CONVS[0]], params, [42]))[0]
    single = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=16, n=1)
    separate = [
        g[0] for g in texts(backend.generate([CONVS[0]] * 3, single, [sample_seed(42, j) for j in range(3)]))
    ]
    assert grouped == separate
    assert len(set(grouped)) == 3


def test_micro_batching_does_not_change_samples(tiny_model_dir, backend):
    params = SamplingParams(temperature=0.7, top_p=1.0, max_tokens=16, n=2)
    whole = texts(backend.generate(CONVS, params, [5, 6, 7]))
    small = TransformersBackend(str(tiny_model_dir), device="cpu", max_batch_rows=2)
    assert texts(small.generate(CONVS, params, [5, 6, 7])) == whole


def test_greedy_is_deterministic_and_matches_plain_generate(backend):
    import torch

    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=16)
    a = texts(backend.generate(CONVS, params, [1, 2, 3]))
    b = texts(backend.generate(CONVS, params, [9, 9, 9]))  # seeds do not matter for greedy
    assert a == b
    prompt = torch.tensor([render_prompt(backend.tokenizer, CONVS[0])])
    with torch.inference_mode():
        plain = backend.model.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, do_sample=False
        )
    expected = backend.tokenizer.decode(plain[0, prompt.shape[1] :], skip_special_tokens=True)
    assert a[0][0] == expected
    assert all(s.seed is None for g in backend.generate(CONVS[:1], params, [1]) for s in g)


def test_sampling_params_from_the_protocol_config():
    from app.protocol import SamplingConfig

    p = SamplingParams.from_config(SamplingConfig(), n=5)
    assert (p.temperature, p.top_p, p.max_tokens, p.n) == (0.7, 1.0, 1000, 5)
    assert SamplingParams.from_config(SamplingConfig(), greedy=True).greedy
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError):
        SamplingParams(temperature=0.7, top_p=0.0)


# -- the sampler itself ---------------------------------------------------------------------------------
def test_noise_is_a_function_of_seed_step_and_token():
    import torch

    keys = step_keys([1, 2, 1], 1000)
    assert keys.shape == (3, 1000) and keys.dtype == np.uint32
    assert np.array_equal(keys[0], keys[2]) and not np.array_equal(keys[0], keys[1])
    assert np.array_equal(step_keys([2], 10)[0], keys[1, :10])  # prefix-stable in the number of steps
    assert len(set(keys[1].tolist())) == 1000
    # The tensor hash (int32, wrapping) equals its pure-Python specification.
    k = torch.from_numpy(keys[:, :1].view("int32"))
    u = token_uniforms(k, 5000)
    for row in range(3):
        for token in (0, 1, 77, 4999):
            assert u[row, token].item() == token_uniform_reference(int(keys[row, 0]), token)
    flat = token_uniforms(torch.from_numpy(step_keys(list(range(64)), 1).view("int32")), 8192).ravel()
    assert (flat > 0).all() and (flat < 1).all()
    assert abs(flat.mean().item() - 0.5) < 0.003 and abs(flat.quantile(0.1).item() - 0.1) < 0.003


def _draw(logits, rows, temperature, top_p):
    import torch

    keys = torch.from_numpy(step_keys(list(range(rows)), 1).view("int32"))
    scores = logits.repeat(rows, 1)
    picks = _make_sampler(keys, 0, temperature, top_p)(torch.zeros((rows, 0), dtype=torch.long), scores)
    assert torch.isinf(picks).sum(dim=1).eq(logits.numel() - 1).all()  # one-hot: one finite score per row
    return Counter(picks.argmax(dim=1).tolist())


def test_sampler_draws_from_the_tempered_distribution_and_respects_top_p():
    import torch

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -8.0, 0.5])
    rows, temperature = 20000, 0.7
    counts = _draw(logits, rows, temperature, 1.0)
    expected = torch.softmax(logits / temperature, dim=0)
    for token, p in enumerate(expected.tolist()):
        assert abs(counts[token] / rows - p) < 4 * (p * (1 - p) / rows) ** 0.5 + 1e-3
    # top_p = 0.9 keeps the smallest prefix (by probability) with mass >= 0.9: tokens 0, 1 and 5 here.
    mass = expected.sort(descending=True).values.cumsum(0)
    assert mass[1] < 0.9 <= mass[2]
    kept = _draw(logits, rows, temperature, 0.9)
    assert set(kept) == {0, 1, 5}
    renorm = expected[0].item() / (expected[0] + expected[1] + expected[5]).item()
    assert abs(kept[0] / rows - renorm) < 0.02


# -- one model per process ------------------------------------------------------------------------------
def test_registry_keeps_the_model_and_switches_only_when_the_uri_changes(tiny_model_dir, tmp_path):
    other = tmp_path / "tiny-copy"
    shutil.copytree(tiny_model_dir, other)
    registry.release()
    loads = registry.loads
    a = registry.get_backend("transformers", str(tiny_model_dir), device="cpu")
    assert registry.get_backend("transformers", str(tiny_model_dir), device="cpu") is a
    assert registry.loads == loads + 1
    b = registry.get_backend("transformers", str(other), device="cpu")
    assert b is not a and b.model_uri == str(other.resolve()) and registry.loads == loads + 2
    assert a.model is None  # the old model was freed before the new one was loaded
    assert registry.get_backend("transformers", str(other), device="cpu") is b
    assert registry.current_backend() is b
    registry.release()
    assert registry.current_backend() is None


def test_registry_rejects_missing_models_and_unknown_kinds(tmp_path):
    from app.errors import NotFound

    with pytest.raises(NotFound, match="no model"):
        registry.get_backend("transformers", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown backend"):
        registry.get_backend("onnx", str(tmp_path))


# -- stop_after_code -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rambling_model(tmp_path_factory):
    return TransformersBackend(str(rambling_model_dir(tmp_path_factory.mktemp("rambling"))), device="cpu")


def test_stop_after_code_ends_each_row_where_its_code_block_closes(rambling_model):
    from app.env.extract import extract_code

    convs = [conv(p) for p in RAMBLING]
    plain = rambling_model.generate(convs, SamplingParams(temperature=0.0, max_tokens=48), [1, 2])
    assert [g[0].text for g in plain] == list(RAMBLING.values())  # the model learned its answers
    stopped = rambling_model.generate(
        convs, SamplingParams(temperature=0.0, max_tokens=48, stop_after_code=True), [1, 2]
    )
    for full, cut in zip(plain, stopped, strict=True):
        full, cut = full[0], cut[0]
        end = full.text.index("```", full.text.index("```") + 3) + 3
        assert cut.text.rstrip() == full.text[:end]  # whole code block, no prose
        assert extract_code(cut.text) == extract_code(full.text)
        assert cut.finish_reason == "stop"
        assert cut.completion_tokens < full.completion_tokens
        ids = rambling_model.tokenizer(cut.text, add_special_tokens=False)["input_ids"]
        assert cut.completion_tokens == len(ids)
    # A block still open at the token limit: untouched.
    short = SamplingParams(temperature=0.0, max_tokens=4, stop_after_code=True)
    assert rambling_model.generate(convs, short, [1, 2])[0][0] == \
        rambling_model.generate(convs, SamplingParams(temperature=0.0, max_tokens=4), [1, 2])[0][0]


def test_stop_after_code_only_cuts_sampled_rows(rambling_model):
    """With the same seeds the kept tokens are the ones sampling produces without the stop."""
    convs = [conv(p) for p in RAMBLING] * 3
    seeds = [5, 6, 7, 8, 9, 10]
    params = SamplingParams(temperature=1.0, max_tokens=48)
    plain = rambling_model.generate(convs, params, seeds)
    stopped = rambling_model.generate(convs, SamplingParams(temperature=1.0, max_tokens=48, stop_after_code=True),
                                      seeds)
    for full, cut in zip(plain, stopped, strict=True):
        assert full[0].text.startswith(cut[0].text)
        assert cut[0].completion_tokens <= full[0].completion_tokens


def test_cutting_a_response_after_its_code_block_gives_the_sample_the_stop_gives(rambling_model):
    """vLLM and a vLLM server sample past the block and cut the response there (``cut_after_code``); the
    transformers backend stops there. For the same tokens both give the same text and token count."""
    from workers.backends.base import Sample, cut_after_code, stopped_after_code

    tok, eos = rambling_model.tokenizer, rambling_model.eos_ids
    convs = [conv(p) for p in RAMBLING]
    stopped = rambling_model.generate(convs, SamplingParams(0.0, max_tokens=48, stop_after_code=True), [1, 2])
    for target, stop in zip(RAMBLING.values(), stopped, strict=True):
        ids = tok(target, add_special_tokens=False)["input_ids"] + [eos[0]]  # what the greedy model samples
        assert cut_after_code(tok, ids, eos) == (stop[0].text, stop[0].completion_tokens)
        full = Sample(text=target, prompt_tokens=9, completion_tokens=len(ids), finish_reason="stop", seed=None)
        assert stopped_after_code(full, tok, ids, eos) == Sample(
            text=stop[0].text, prompt_tokens=9, completion_tokens=stop[0].completion_tokens, finish_reason="stop")
        # the end of the turn before the block closes, or a block still open at the end: nothing is cut
        block_end = len(tok(target[: target.rindex("```")], add_special_tokens=False)["input_ids"])
        assert cut_after_code(tok, ids[:block_end] + [eos[0]] + ids[block_end:], eos) is None
        assert cut_after_code(tok, ids[:block_end], eos) is None
        cut_at_length = Sample(text="x", prompt_tokens=9, completion_tokens=block_end, finish_reason="length")
        assert stopped_after_code(cut_at_length, tok, ids[:block_end], eos) is cut_at_length


def test_every_backend_takes_stop_after_code():
    from app.protocol import ExperimentConfig
    from workers.collect import CollectSpec

    for backend in ("transformers", "vllm", "server"):
        cfg = ExperimentConfig(base_model="m", backend=backend, rollout={"sampling": {"stop_after_code": True}})
        assert cfg.rollout.sampling.stop_after_code
        assert CollectSpec(backend=backend, stop_after_code=True).stop_after_code
