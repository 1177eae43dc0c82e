"""Embedded rounds let go of the models a step does not use: the sampler's and the scorer's caches really
empty (the model objects are gone), ``release_for_step`` drops exactly what each step does not need, and the
memory goes back to the operating system (measured in a fresh process)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(generator folder, verifier folder): the tiny model, and a verifier saved from it the normal way."""
    from app.tiny_model import build_tiny_model
    from trainers.verifier.config import VerifierTrainingConfig
    from trainers.verifier.model import load_model_for_training, load_tokenizer, save_verifier

    base = str(build_tiny_model(tmp_path_factory.getbasetemp() / "tiny"))
    tok = load_tokenizer(base)
    model = load_model_for_training(base, tok, VerifierTrainingConfig())
    vdir = str(save_verifier(model, tok, tmp_path_factory.mktemp("v") / "tiny-verifier", {"test": True}))
    return base, vdir


def _load_both(base: str, vdir: str):
    from trainers.verifier.scorer import get_scorer
    from workers.collect import load_backend

    backend = load_backend("transformers", base)
    scorer = get_scorer(vdir, device="cpu", max_length=256)
    return weakref.ref(backend.model), weakref.ref(scorer.model)


def test_release_models_frees_the_sampler_and_the_scorer(models):
    from trainers.verifier.scorer import get_scorer
    from workers.backends import current_backend
    from workers.tasks import sample, score

    base, vdir = models
    sampler_ref, scorer_ref = _load_both(base, vdir)
    gc.collect()
    assert sampler_ref() is not None and scorer_ref() is not None  # the caches hold them between jobs

    sample.release_models()
    assert current_backend() is None
    assert sampler_ref() is None, "the sampler's model is still referenced after release_models()"
    assert scorer_ref() is not None  # the other cache is left alone

    score.release_models()
    assert scorer_ref() is None, "the scorer's model is still referenced after release_models()"
    # the next job loads it again
    assert get_scorer(vdir, device="cpu", max_length=256).model is not None
    score.release_models()


@pytest.mark.parametrize(
    ("step", "sampler_kept", "scorer_kept"),
    [
        ("collect", True, False),
        ("score_new", False, True),
        ("train_verifier", False, False),
        ("train_generator", False, False),
        ("evaluate", True, True),  # an evaluation samples and scores in turn
    ],
)
def test_release_for_step_drops_what_the_step_does_not_use(models, step, sampler_kept, scorer_kept):
    from workers import memory
    from workers.tasks import sample, score

    base, vdir = models
    sampler_ref, scorer_ref = _load_both(base, vdir)
    try:
        memory.release_for_step(step)
        assert (sampler_ref() is not None) == sampler_kept
        assert (scorer_ref() is not None) == scorer_kept
    finally:
        sample.release_models()
        score.release_models()


_MEASURE = r"""
import json, sys

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

from app.tiny_model import build_tiny_model
from trainers.verifier.config import VerifierTrainingConfig
from trainers.verifier.model import load_model_for_training, load_tokenizer, save_verifier
from trainers.verifier.scorer import get_scorer
from workers.collect import load_backend
from workers.backends.base import SamplingParams
from workers.memory import release_for_step

base = str(build_tiny_model(sys.argv[1] + "/mid", hidden_size=512, num_layers=8, num_heads=8))
tok = load_tokenizer(base)
v = load_model_for_training(base, tok, VerifierTrainingConfig())
vdir = str(save_verifier(v, tok, sys.argv[1] + "/mid-verifier", {"test": True}))
del v
release_for_step("relabel")  # only the trim: start from a clean heap
before = rss()
backend = load_backend("transformers", base)
backend.generate([[{"role": "user", "content": "Write f."}]] * 4, SamplingParams(0.7, 1.0, 16), [1, 2, 3, 4])
scorer = get_scorer(vdir, device="cpu", max_length=256)
scorer.score([("Write f.", "def f(): return 1")] * 8)
weights = sum(p.numel() * p.element_size() for m in (backend.model, scorer.model) for p in m.parameters())
del backend, scorer
loaded = rss()
release_for_step("train_generator")
print(json.dumps({"before": before, "loaded": loaded, "released": rss(), "weights": weights}))
"""


def test_released_memory_goes_back_to_the_os(tmp_path):
    """Loaded and used, then released before a training step: the process's resident memory falls back by
    (almost) the two models' weights (a reference left anywhere, or a cache not emptied, keeps it up)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["loaded"] - m["before"] >= 0.9 * m["weights"], m  # the models were really resident
    assert m["loaded"] - m["released"] >= 0.8 * m["weights"], m
