"""The protocol: every value that decides what an experiment does, with the paper's defaults.

An experiment freezes one ``ExperimentConfig`` (as JSON) at creation; rounds, trainers and evaluations read
their settings from it, so a run can be repeated and compared exactly.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    pairs_per_problem: int = 32
    # "per_round": pairs_per_problem pairs drawn from each round's rollouts, the rounds' sets concatenated (the
    # reference: RM1 sees about 2x the pairs of RM0); "pooled": drawn once from all rounds' rows together.
    pair_sampling: Literal["per_round", "pooled"] = "per_round"
    l2_coeff: float = 1e-3  # reward centering: 1e-3 * mean(r^2)
    learning_rate: float = 1e-6
    epochs: float = 2.0
    effective_batch_size: int = 64
    per_device_batch_size: int = 4
    max_length: int = 2048
    use_lora: bool = False
    seed: int = 0


class RelabelConfig(_Frozen):
    expert: Literal["both", "oracle", "learned"] = "both"  # score = LV + 100 * label
    relabel_failed: int = 3  # K: failed trajectories relabeled per problem
    keep_successful: bool = True
    aggregate_rounds: bool = True  # train on the union of all rounds' examples


class GeneratorConfig(_Frozen):
    learning_rate: float = 5e-7
    epochs: float = 2.0
    effective_batch_size: int = 16
    per_device_batch_size: int = 1
    max_length: int = 8192
    use_lora: bool = False
    from_base_each_round: bool = True  # paper: retrain from the base model on the union of all rounds
    seed: int = 0


class EvalConfig(_Frozen):
    datasets: list[str] = ["mbpp:test", "humaneval:test"]
    turns: int = 3
    bon_candidates: int = Field(5, ge=1, description="N candidates per turn")
    bon_chains: int = Field(10, ge=1, description="C independent chains per problem")
    selectors: list[Literal["random", "lv", "pt", "pt+lv"]] = ["pt+lv"]
    greedy: bool = True
    temperature: float = 0.7  # BoN sampling temperature; greedy uses 0
    limit: int | None = None  # evaluate the first N problems of each dataset (None = all)
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


class ExperimentConfig(_Frozen):
    method: Literal["mucode", "multi_rft", "rft", "rft_lv"] = "mucode"
    base_model: str
    backend: Literal["transformers", "vllm"] = "transformers"
    train_datasets: list[str] = ["mbpp:train"]
    train_limit: int | None = None  # first N train problems (None = all)
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

    @model_validator(mode="after")
    def _backend_supports_sampling(self) -> ExperimentConfig:
        if self.backend == "vllm" and self.rollout.sampling.stop_after_code:
            raise ValueError("rollout.sampling.stop_after_code needs the transformers backend (vLLM has no "
                             "per-row stop at the end of a code block)")
        return self

    @field_validator("trainer_overrides")
    @classmethod
    def _known_trainers(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = set(v) - {"verifier", "generator"}
        if unknown:
            raise ValueError(f"trainer_overrides keys are 'verifier' and 'generator', not {sorted(unknown)}")
        return v
