"""The protocol: every value that decides what an experiment does, with the paper's defaults.

An experiment freezes one ``ExperimentConfig`` (as JSON) at creation; rounds, trainers and evaluations read
their settings from it, so a run can be repeated and compared exactly.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def dataset_splits() -> dict[str, tuple[str, ...] | None]:
    """{every registered dataset: its splits}. MBPP and its subsets split by task id; HumanEval and HumanEval+
    are one test split. None: a dataset registered since, whose splits are not listed here (any is accepted)."""
    from app.datasets import DATASETS
    from app.datasets.base import MBPP_SPLITS

    mbpp = tuple(name for name, _, _ in MBPP_SPLITS)
    known = {"mbpp": mbpp, "mbpp_sanitized": mbpp, "mbpp_plus": mbpp, "humaneval": ("test",),
             "humaneval_plus": ("test",)}
    return {name: known.get(name) for name in DATASETS}


def check_dataset_specs(specs: list[str]) -> list[str]:
    """Refuse a ``DATASET[:SPLIT]`` whose dataset is not registered or whose split does not exist, naming the
    known ones: at creation, not when a round first reads the dataset."""
    splits = dataset_splits()
    for spec in specs:
        name, _, split = str(spec).partition(":")
        name, split = name.strip(), split.strip()
        if name not in splits:
            raise ValueError(f"unknown dataset {name!r} in {spec!r}; known datasets: {', '.join(splits)} "
                             "(DATASET or DATASET:SPLIT, e.g. mbpp:train)")
        own = splits[name]
        if split and own is not None and split not in own:
            raise ValueError(f"dataset {name} has no split {split!r} (in {spec!r}); its splits: {', '.join(own)}")
    return specs


class SamplingConfig(_Frozen):
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(1000, gt=0)
    # End a response where its first Python code block closes (the code that runs is whole; the prose after it
    # is not generated). Off = the paper (no stop strings). Transformers backend only.
    stop_after_code: bool = False


class RolloutConfig(_Frozen):
    turns: int = Field(3, ge=1, description="T: turns per trajectory")
    rollouts_per_problem: int = Field(15, ge=1, description="M: trajectories per train problem")
    stop_rule: Literal["public", "public_and_private"] = "public"
    sampling: SamplingConfig = SamplingConfig()
    batch_size: int = Field(32, ge=1, description="trajectories sampled together in one job")
    seed: int = 0
    # Tests shown (and checked as public tests) on MBPP train problems: "all" 3 asserts, as the reference does
    # (while MBPP test shows only the first: a train/test prompt shift), or "first" to match the test split.
    train_shown_tests: Literal["all", "first"] = "all"


class VerifierConfig(_Frozen):
    loss: Literal["bt", "bce"] = "bt"
    pairs_per_problem: int = Field(32, gt=0)
    # "per_round": pairs_per_problem pairs drawn from each round's rollouts, the rounds' sets concatenated (the
    # reference: RM1 sees about 2x the pairs of RM0); "pooled": drawn once from all rounds' rows together.
    pair_sampling: Literal["per_round", "pooled"] = "per_round"
    l2_coeff: float = Field(1e-3, ge=0.0)  # reward centering: 1e-3 * mean(r^2)
    learning_rate: float = Field(1e-6, gt=0.0)
    epochs: float = Field(2.0, gt=0.0)
    effective_batch_size: int = Field(64, gt=0)
    per_device_batch_size: int = Field(4, gt=0)
    max_length: int = Field(2048, gt=0)
    use_lora: bool = False
    seed: int = 0


class RelabelConfig(_Frozen):
    expert: Literal["both", "oracle", "learned"] = "both"  # score = LV + 100 * label
    relabel_failed: int = Field(3, ge=0)  # K: failed trajectories relabeled per problem (0: successes only)
    keep_successful: bool = True
    aggregate_rounds: bool = True  # train on the union of all rounds' examples


class GeneratorConfig(_Frozen):
    learning_rate: float = Field(5e-7, gt=0.0)
    epochs: float = Field(2.0, gt=0.0)
    effective_batch_size: int = Field(16, gt=0)
    per_device_batch_size: int = Field(1, gt=0)
    max_length: int = Field(8192, gt=0)
    use_lora: bool = False
    from_base_each_round: bool = True  # paper: retrain from the base model on the union of all rounds
    seed: int = 0


class EvalConfig(_Frozen):
    datasets: list[str] = ["mbpp:test", "humaneval:test"]
    turns: int = Field(3, ge=1)
    bon_candidates: int = Field(5, ge=1, description="N candidates per turn")
    bon_chains: int = Field(10, ge=1, description="C independent chains per problem")
    selectors: list[Literal["random", "lv", "pt", "pt+lv"]] = ["pt+lv"]
    greedy: bool = True
    temperature: float = Field(0.7, ge=0.0)  # BoN sampling temperature; greedy uses 0
    limit: int | None = Field(None, gt=0)  # evaluate the first N problems of each dataset (None = all)
    max_new_tokens: int | None = Field(None, gt=0, description="None: the rollouts' sampling.max_new_tokens")
    baseline: bool = True  # round 0 also evaluates the base generator G0 (with RM0): the paper's "Instruct" rows
    seed: int = 0
    # Which verifier searches a generator: "same_round" = one trained on that generator's own rollouts (the
    # paper's G2 with RM2); "previous_round" = the verifier the round started with (never saw its samples).
    verifier_pairing: Literal["same_round", "previous_round"] = "same_round"
    # How a greedy chain counts: "last_turn" = the label of its last executed turn (public and private tests
    # pass) under the rollout stop rule, as the reference's greedy N=1 numbers; "first_public" = solved iff its
    # first public-passing turn passes the private tests (the Best-of-N rule). Both are stored side by side;
    # they differ only when the stop rule lets a chain go on after a public pass (public_and_private).
    greedy_metric: Literal["last_turn", "first_public"] = "last_turn"

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, v: list[str]) -> list[str]:
        return check_dataset_specs(v)


class HarnessConfig(_Frozen):
    # The reference starts every program with 16 import lines (math, re, numpy as np, from typing import *, ...):
    # code that uses math without importing it passes there. Part of what a cached verdict depends on.
    import_prelude: bool = True


# Values an experiment frozen before a setting existed keeps: what mucode did then, so that resuming an old
# experiment never changes its protocol halfway.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "harness": {"import_prelude": False},
    "rollout": {"train_shown_tests": "all"},
    "verifier": {"pair_sampling": "pooled"},
    "eval": {"verifier_pairing": "previous_round", "greedy_metric": "first_public"},
}


class TrackingConfig(_Frozen):
    """Where this experiment's training curves and round results go (app/tracking.py); overrides
    MUCODE_TRACKING / MUCODE_TRACKING_URI. Not part of the protocol: it changes no result."""

    backend: Literal["none", "tensorboard", "mlflow", "wandb"]
    uri: str | None = None  # TensorBoard folder, MLflow tracking URI, W&B local folder; None: the environment's


class ExperimentConfig(_Frozen):
    method: Literal["mucode", "multi_rft", "rft", "rft_lv"] = "mucode"
    base_model: str
    backend: Literal["transformers", "vllm", "server"] = "transformers"
    train_datasets: list[str] = Field(["mbpp:train"], min_length=1)
    train_limit: int | None = Field(None, gt=0)  # first N train problems (None = all)
    rollout: RolloutConfig = RolloutConfig()
    verifier: VerifierConfig = VerifierConfig()
    relabel: RelabelConfig = RelabelConfig()
    generator: GeneratorConfig = GeneratorConfig()
    eval: EvalConfig = EvalConfig()
    harness: HarnessConfig = HarnessConfig()
    # Trainer knobs outside the paper's protocol, frozen with the experiment like everything else:
    # {"verifier": VerifierTrainingConfig fields, "generator": GeneratorTrainConfig fields} (e.g. max_steps,
    # evaluate, bf16). Empty = the trainers' defaults.
    trainer_overrides: dict[str, dict[str, Any]] = {}
    # None: the environment's tracker. Left out of the stored JSON when None, so that configs stored before it
    # existed still equal a fresh dump of the same settings (`experiment create` compares them).
    tracking: TrackingConfig | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_tracking(self, handler):
        data = handler(self)
        if self.tracking is None and isinstance(data, dict):
            data.pop("tracking", None)
        return data

    @classmethod
    def frozen(cls, stored: dict[str, Any]) -> ExperimentConfig:
        """The config an experiment was created with, read back from the store: a setting added since then takes
        its legacy value (``LEGACY_DEFAULTS``), not today's default."""
        data = dict(stored)
        for section, legacy in LEGACY_DEFAULTS.items():
            part = data.get(section)
            part = dict(part) if isinstance(part, dict) else ({} if part is None else part)
            if isinstance(part, dict):
                data[section] = {**legacy, **part}
        return cls(**data)

    @field_validator("train_datasets")
    @classmethod
    def _known_train_datasets(cls, v: list[str]) -> list[str]:
        return check_dataset_specs(v)

    @field_validator("trainer_overrides")
    @classmethod
    def _known_trainers(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = set(v) - {"verifier", "generator"}
        if unknown:
            raise ValueError(f"trainer_overrides keys are 'verifier' and 'generator', not {sorted(unknown)}")
        return v
