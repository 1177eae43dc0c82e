"""Generator SFT: exact label masks on the tiny model's tokenizer, no doubled BOS, training lowers the loss and
registers a generator version with full lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app.db import models as m
from app.tiny_model import CHAT_TEMPLATE
from tests.helpers.seed import STATE, TARGET, sft_round

REPO = Path(__file__).resolve().parents[1]
NO_MARKERS = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
# The end-of-turn token written outside the {% generation %} block (as some real templates do).
EOT_OUTSIDE = CHAT_TEMPLATE.replace(
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}",
    "{% generation %}{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>' }}",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from app.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


def _labelled(tokenized) -> list[int]:
    return [i for i, lab in zip(tokenized.input_ids, tokenized.labels, strict=True) if lab != -100]


@pytest.mark.parametrize("template", [None, NO_MARKERS, EOT_OUTSIDE], ids=["markers", "boundary", "eot-outside"])
def test_mask_covers_exactly_the_target_and_end_of_turn(tok, template):
    from trainers.sft.trainer import tokenize_example

    messages = STATE + [{"role": "assistant", "content": TARGET}]
    if template is not None:
        tok = _with_template(tok, template)
    out = tokenize_example(tok, messages)
    assert out.method == ("boundary" if template is NO_MARKERS else "assistant_mask")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    expected = tok(TARGET, add_special_tokens=False)["input_ids"] + [im_end]
    assert _labelled(out) == expected
    # One contiguous span: the target, then <|im_end|>; only the template's trailing newline follows it.
    first = next(i for i, lab in enumerate(out.labels) if lab != -100)
    assert out.labels[first : first + len(expected)] == expected
    assert all(lab == -100 for lab in out.labels[: first])
    assert tok.decode(out.input_ids[first + len(expected) :]) == "\n"
    # Nothing of the state: the prompt rendered with the generation prompt is exactly the unlabelled prefix.
    prompt_ids = tok.apply_chat_template(STATE, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert out.input_ids[:first] == list(prompt_ids["input_ids"]) and out.prompt_is_prefix
    assert tok.decode(_labelled(out)) == TARGET + "<|im_end|>"


def _with_template(tok, template):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = template
    return t


def test_no_doubled_bos_with_a_bos_adding_tokenizer(tok):
    """A tokenizer that adds BOS itself and a template that writes BOS: the reference's double-BOS setup."""
    import copy

    from tokenizers import processors

    from trainers.sft.trainer import tokenize_example

    t = copy.deepcopy(tok)
    bos = t.bos_token_id
    t.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{t.bos_token} $A", special_tokens=[(t.bos_token, bos)]
    )
    t.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    messages = STATE + [{"role": "assistant", "content": TARGET}]
    # The naive path (render to text, tokenize with special tokens) doubles it: the test setup can see the bug.
    naive = t(t.apply_chat_template(messages, tokenize=False))["input_ids"]
    assert naive[:2] == [bos, bos]
    out = tokenize_example(t, messages)
    assert out.input_ids[0] == bos and out.input_ids[1] != bos
    assert out.input_ids.count(bos) == 1
    im_end = t.convert_tokens_to_ids("<|im_end|>")
    assert _labelled(out) == t(TARGET, add_special_tokens=False)["input_ids"] + [im_end]


def test_first_turn_state_and_errors(tok):
    from trainers.sft.trainer import MaskError, tokenize_example

    out = tokenize_example(tok, [STATE[0], {"role": "assistant", "content": TARGET}])
    assert tok.decode(_labelled(out)) == TARGET + "<|im_end|>"
    with pytest.raises(MaskError):
        tokenize_example(tok, STATE)  # no assistant target
    no_eot = _with_template(tok, NO_MARKERS.replace("'<|im_end|>'", "''"))
    with pytest.raises(MaskError, match="end-of-turn"):
        tokenize_example(no_eot, [STATE[0], {"role": "assistant", "content": TARGET}])


def test_labels_match_trl_prompt_completion_with_assistant_mask(tiny, tok, tmp_path):
    """TRL 1.16's own path (prompt-completion + assistant_only_loss) agrees with ours on a marker template,
    and its collator keeps the end-of-turn label even with pad == eos."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from trainers.sft.trainer import tokenize_example

    convs = [
        (STATE, TARGET),
        ([STATE[0]], "def f(x):\n    return x + 1"),
    ]
    ds = Dataset.from_list([{"prompt": p, "completion": [{"role": "assistant", "content": c}]} for p, c in convs])
    args = SFTConfig(
        output_dir=str(tmp_path), assistant_only_loss=True, max_length=None, report_to="none", bf16=False,
        use_cpu=True, activation_checkpointing=False,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny), args=args, train_dataset=ds, processing_class=tok
    )
    for (prompt, completion), row in zip(convs, trainer.train_dataset, strict=True):
        ours = tokenize_example(tok, prompt + [{"role": "assistant", "content": completion}])
        assert row["input_ids"] == ours.input_ids
        assert row["labels"] == ours.labels

    eos = tok.eos_token_id
    rows = [{"input_ids": o.input_ids, "labels": o.labels} for o in (
        tokenize_example(tok, p + [{"role": "assistant", "content": c}]) for p, c in convs
    )]
    batch = DataCollatorForLanguageModeling(pad_token_id=eos)(rows)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["labels"][i][:n].tolist() == r["labels"]
        assert eos in batch["labels"][i].tolist()


# -- training from a store ------------------------------------------------------------------------------
def test_sft_lowers_the_loss_and_registers_the_generator(sqlite_store, tiny, tmp_path, monkeypatch):
    from trainers.relabel import build_training_set
    from trainers.sft.config import GeneratorTrainConfig
    from trainers.sft.trainer import train_generator

    monkeypatch.setenv("MUCODE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    from app.config import get_settings

    get_settings.cache_clear()
    store = sqlite_store
    rnd, g = sft_round(store, "sft")
    ts = build_training_set(store, rnd, method="mucode")
    assert ts["stats"]["examples"] == 6
    cfg = GeneratorTrainConfig(
        training_set=str(ts["id"]), base_model=str(tiny), learning_rate=3e-3, max_steps=12,
        effective_batch_size=6, per_device_train_batch_size=6, gradient_checkpointing=False, bf16="false",
    )
    mv = train_generator(cfg, store=store)
    met = mv["metrics"]
    assert met["global_steps"] == 12 and met["data_kept"] == 6 and met["data_too_long"] == 0
    assert met["train_loss_last"] < met["train_loss_first"] - 0.5, met["train_losses"]
    assert met["data_mask_method"] == "assistant_mask"
    assert met["effective_batch_size"] == 6 and met["gradient_accumulation_steps"] == 1
    with store.session() as s:
        row = s.scalars(select(m.ModelVersion).where(m.ModelVersion.id == mv["id"])).one()
        assert row.kind == "generator" and row.parent_id == g and row.round_id == rnd
        assert row.training_set_id == ts["id"] and row.base_model == str(tiny)
        assert row.config["learning_rate"] == 3e-3 and row.config["init_from"] == str(tiny)
        assert row.config["relabel"]["method"] == "mucode"
    uri = Path(mv["uri"])
    assert uri.is_relative_to(tmp_path / "artifacts" / "models")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(uri)
    assert AutoTokenizer.from_pretrained(uri).chat_template == CHAT_TEMPLATE
    # Idempotent: the registered version is returned without training again.
    again = train_generator(cfg, store=store)
    assert again["id"] == mv["id"] and again["metrics"] == met
    get_settings.cache_clear()


def test_a_pullable_model_that_is_not_pulled_says_how_to_pull_it(sqlite_store, tmp_path, monkeypatch):
    """A pulled-name base model missing from the cache fails before anything is loaded, with the command that
    pulls it (not with a model hub error about a repository that does not exist)."""
    import re

    from app.config import get_settings
    from app.errors import NotFound
    from app.model_registry import PULLABLE
    from trainers.relabel import build_training_set
    from trainers.sft.config import GeneratorTrainConfig
    from trainers.sft.trainer import model_name_for, train_generator

    monkeypatch.setenv("MUCODE_MODEL_CACHE_DIR", str(tmp_path / "no-models"))
    get_settings.cache_clear()
    try:
        rnd, _ = sft_round(sqlite_store, "sft", n_problems=1)
        ts = build_training_set(sqlite_store, rnd, method="mucode")
        name = next(iter(PULLABLE))
        cfg = GeneratorTrainConfig(training_set=str(ts["id"]), base_model=name, max_steps=1)
        with pytest.raises(NotFound, match=re.escape(f"is not pulled yet: run `mucode models pull {name}`")):
            train_generator(cfg, store=sqlite_store)
        assert sqlite_store.get_model_version(model_name_for(ts["name"]), required=False) is None
    finally:
        get_settings.cache_clear()


def test_lora_and_module_entry_point(sqlite_store, tiny, tmp_path):
    """`python -m trainers.sft.train` with LoRA (merged on save), registered in the store."""
    from trainers.relabel import build_training_set

    store = sqlite_store
    rnd, _ = sft_round(store, "sft", n_problems=1)
    ts = build_training_set(store, rnd, method="multi_rft")
    env = {**os.environ, "MUCODE_DATABASE_URL": str(store.engine.url),
           "MUCODE_ARTIFACTS_DIR": str(tmp_path / "art"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.sft.train", "--training-set", str(ts["id"]), "--base-model", str(tiny),
         "--use-lora", "true", "--lora-r", "4", "--learning-rate", "1e-3", "--max-steps", "2",
         "--gradient-checkpointing", "false", "--bf16", "false", "--name", "lora-gen"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["name"] == "lora-gen" and out["metrics"]["global_steps"] == 2
    mv = store.get_model_version("lora-gen")
    assert mv.config["use_lora"] is True and mv.config["adapter_only"] is False
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(mv.uri)  # a merged, plain model: no adapter left
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_train_generator_task_under_accelerate_launch(sqlite_store, tiny, tmp_path, monkeypatch):
    """The task body relabels the round, trains with 2 processes (`accelerate launch`, gloo on a CPU host),
    registers one version and records it as the round's output."""
    import workers.tasks.train_generator as task_mod
    from workers.celery_app import celery_app

    assert celery_app.tasks["mucode.train_generator"].name == task_mod.train_generator.name == "mucode.train_generator"
    monkeypatch.setenv("MUCODE_ARTIFACTS_DIR", str(tmp_path / "art"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    store = sqlite_store
    rnd, _ = sft_round(store, "sft", n_problems=2)
    with store.session() as s:  # the experiment's frozen settings reach the trainer
        s.execute(update(m.Experiment).values(method="multi_rft", base_model=str(tiny),
                                              config={"generator": {"learning_rate": 1e-3}}))
    out = task_mod.run_train_generator(
        round_ref=rnd, num_processes=2, store=store,
        config={"max_steps": 2, "effective_batch_size": 2, "gradient_checkpointing": False, "bf16": "false"},
    )
    mv = store.get_model_version(out["model_version_id"])
    assert mv.metrics["world_size"] == 2 and mv.metrics["gradient_accumulation_steps"] == 1
    assert mv.config["learning_rate"] == 1e-3 and mv.config["relabel"]["method"] == "multi_rft"
    assert mv.base_model == str(tiny) and Path(mv.uri, "config.json").exists()
    with store.session() as s:
        assert s.get(m.Round, rnd).generator_out_id == mv.id
        assert s.scalar(select(m.ModelVersion.id).where(m.ModelVersion.kind == "generator",
                                                        m.ModelVersion.training_set_id == out["training_set_id"]))
    # Redelivered: nothing is trained again.
    again = task_mod.run_train_generator(round_ref=rnd, store=store, config={"max_steps": 2})
    assert again["model_version_id"] == mv.id


def test_cli_generator_train(sqlite_store, tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli.main import root
    from app.config import get_settings
    from trainers.relabel import build_training_set

    store = sqlite_store
    rnd, _ = sft_round(store, "sft", n_problems=1)
    ts = build_training_set(store, rnd, method="mucode")
    monkeypatch.setenv("MUCODE_DATABASE_URL", str(store.engine.url))
    monkeypatch.setenv("MUCODE_ARTIFACTS_DIR", str(tmp_path / "art"))
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(root, [
            "generator", "train", "--training-set", ts["name"], "--base-model", str(tiny), "--max-steps", "1",
            "--lr", "1e-4", "--effective-batch-size", "2", "--set-round-output", "--json",
        ])
        assert res.exit_code == 0, res.output
        mv = json.loads(res.stdout)
        assert mv["kind"] == "generator" and mv["training_set_id"] == ts["id"]
        assert mv["config"]["effective_batch_size"] == 2 and mv["metrics"]["global_steps"] == 1
        with store.session() as s:
            assert s.get(m.Round, rnd).generator_out_id == mv["id"]
    finally:
        get_settings.cache_clear()


def test_invalid_generator_settings_of_the_experiment_are_an_error_not_the_defaults(sqlite_store):
    from app.errors import ConfigError
    from trainers.relabel import build_training_set
    from workers.tasks.train_generator import run_train_generator

    rnd, _ = sft_round(sqlite_store, "sft", n_problems=1)
    ts = build_training_set(sqlite_store, rnd, method="mucode")
    with sqlite_store.session() as s:
        s.execute(update(m.Experiment).where(m.Experiment.name == "sft")
                  .values(config={"generator": {"learning_rate": -1, "warmup": 3}}))
    with pytest.raises(ConfigError, match=r"experiment 'sft'.*generator\.learning_rate: Input should be greater "
                                          r"than 0.*generator\.warmup: Extra inputs are not permitted"):
        run_train_generator(training_set=ts["id"], store=sqlite_store)
