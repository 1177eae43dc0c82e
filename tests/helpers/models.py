"""Model fixtures for tests: the tiny random Llama, built once and shared.

Use it from any test module (no conftest needed):

    from tests.helpers.models import tiny_model_dir  # noqa: F401  (a session fixture)

    def test_something(tiny_model_dir):
        ...  # a model folder: config.json, safetensors, tokenizer with a ChatML template

The model is built under the system temp folder, keyed by ``TINY_VERSION``, so repeated test sessions (and
parallel ones) reuse one build; it is written to a private folder first and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest


def tiny_model_path() -> Path:
    """Build (once) and return the shared tiny model folder."""
    from app.tiny_model import TINY_VERSION, build_tiny_model

    root = Path(os.environ.get("MUCODE_TEST_MODEL_CACHE", Path(tempfile.gettempdir()) / "mucode-test-models"))
    target = root / f"tiny-v{TINY_VERSION}"
    if (target / "mucode_tiny.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".build-{uuid.uuid4().hex}"
    try:
        build_tiny_model(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "mucode_tiny.json").is_file():  # not a parallel build that won: a real error
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Llama model folder (session-scoped, shared between sessions)."""
    return tiny_model_path()
