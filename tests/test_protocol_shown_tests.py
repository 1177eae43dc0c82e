"""The train/test shown-test switch (``rollout.train_shown_tests``): MBPP train shows and checks its 3 asserts
("all", the reference) or only the first ("first", as the test split does), at rollout time."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.config import get_settings
from app.db import models as m
from app.env import build_prompt
from app.harness import Harness, first_test_only
from app.sandbox import SANDBOX_VERSION
from tests.helpers.collect import load_mbpp

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("torch_single_thread")]


@pytest.fixture(scope="module")
def mbpp():
    from app.datasets.mbpp import load_mbpp as parse

    return {p.external_id: p for p in parse(get_settings().data_dir).problems}


def test_first_shows_and_checks_only_the_first_assert(mbpp):
    train, test = mbpp["mbpp/606"], mbpp["mbpp/11"]
    assert len(train.public_tests) == 3 and len(test.public_tests) == 1
    first = Harness(shown_tests="first").view(train)
    assert first.public_tests == train.public_tests[:1] and first.shown_tests == train.shown_tests[:1]
    assert first.private_tests == train.private_tests  # the oracle is unchanged
    prompt = build_prompt(first)
    assert train.public_tests[0] in prompt and train.public_tests[1] not in prompt
    assert all(t in build_prompt(Harness().view(train)) for t in train.public_tests)  # "all": the reference
    # A problem with one public test (the test split, HumanEval) is the same under both.
    assert Harness(shown_tests="first").view(test) is test
    # Setup code shown before the asserts stays shown.
    with_setup = next(p for p in mbpp.values() if p.split == "train" and p.setup_code.strip())
    view = Harness(shown_tests="first").view(with_setup)
    assert view.shown_tests == [with_setup.setup_code, with_setup.public_tests[0]]
    assert first_test_only(["a", "a"], ["a", "a"]) == (["a"], ["a"])  # duplicate asserts: position, not value


@pytest.fixture
def embedded(monkeypatch, sqlite_store):
    monkeypatch.setenv("MUCODE_DATABASE_URL", sqlite_store.engine.url.render_as_string(hide_password=False))
    monkeypatch.delenv("MUCODE_BROKER_URL", raising=False)
    get_settings.cache_clear()
    yield sqlite_store
    get_settings.cache_clear()


@pytest.mark.parametrize("shown", ["all", "first"])
def test_a_train_collection_shows_and_checks_what_the_switch_says(embedded, tiny_model, shown):
    from app.store.rollouts import Owner
    from workers import collect

    store = embedded
    load_mbpp(store)
    gen = store.ensure_model_version(tiny_model, "generator", tiny_model, tiny_model)
    spec = collect.CollectSpec(turns=1, samples_per_problem=1, max_new_tokens=16, batch_size=2, shown_tests=shown)
    ev = store.create_evaluation(f"shown-{shown}", generator_id=gen, dataset="mbpp", split="train", mode="collect",
                                 config=spec.model_dump(mode="json"))
    owner = Owner(evaluation_id=ev)
    ids = collect.dataset_problem_ids(store, "mbpp", "train", 2)
    collect.create_collection(store, owner, ids, spec, generator_id=gen)
    collect.start(store, owner)
    assert collect.status(store, owner)["done"]
    with store.session() as s:
        rows = s.execute(
            select(m.Problem.public_tests, m.Turn.messages, m.Candidate.code_hash)
            .join(m.Rollout, m.Rollout.problem_id == m.Problem.id)
            .join(m.Turn, m.Turn.rollout_id == m.Rollout.id)
            .join(m.Candidate, m.Candidate.turn_id == m.Turn.id)
            .where(m.Rollout.evaluation_id == ev)
        ).all()
        execs = {(e.code_hash, e.suite_kind): e for e in s.scalars(select(m.Execution))}
    assert len(rows) == 2
    version = f"{SANDBOX_VERSION}+prelude" + ("+first" if shown == "first" else "")
    for public, messages, ch in rows:
        prompt = messages[0]["content"]
        assert public[0] in prompt and all((t in prompt) is (shown == "all") for t in public[1:])
        pub, priv = execs[(ch, "public")], execs[(ch, "private")]
        assert pub.sandbox_version == priv.sandbox_version == version
        assert len(pub.tests) == (3 if shown == "all" else 1) and len(priv.tests) == 3
    jobs = store.list_jobs(key_prefix=collect.collect_key(owner) + "/")
    assert any(j.kind == "execute" and j.payload.get("harness") == {"import_prelude": True, "shown_tests": shown}
               for j in jobs)
