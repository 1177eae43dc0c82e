"""The data model (docs/design.md): SQLAlchemy 2 typed declarative models.

Every table has a natural unique key so that each write can be idempotent (``ON CONFLICT``), and the
indexes the trainers and the dashboard query by. JSON columns are JSONB on Postgres, JSON elsewhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# BIGINT ids on Postgres; SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Vocabularies. Statuses and kinds are CHECK constraints (a typo in a writer fails at once instead of storing a
# state nobody reads); adding a value needs a migration. Splits are checked where problems are asked for.
SPLITS = ("prompt", "train", "validation", "test")
MODEL_KINDS = ("generator", "verifier")
SUITE_KINDS = ("public", "private")
EXEC_STATUSES = ("passed", "failed", "error", "timeout", "memory", "output_limit", "sandbox_error")
ROLLOUT_STATUSES = ("active", "done")
RUN_STATUSES = ("pending", "running", "done", "failed")  # a round's and an evaluation's
# superseded: queued or running when its work was handed to a new attempt (a resume after a killed worker)
JOB_STATES = ("queued", "running", "done", "failed", "superseded")


def one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    """``column IN (...)``, named after the column (``ck_<table>_<column>``)."""
    listed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({listed})", name=column)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar = {dict[str, Any]: Json, list[Any]: Json}


def _now() -> Any:
    return func.current_timestamp()


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    source_path: Mapped[str] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64))
    num_problems: Mapped[int] = mapped_column(Integer, default=0)
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())

    problems: Mapped[list[Problem]] = relationship(back_populates="dataset")


class Problem(Base):
    __tablename__ = "problems"
    __table_args__ = (
        UniqueConstraint("external_id"),
        Index("ix_problems_dataset_split", "dataset_id", "split"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(16))
    # Globally unique, human id: "mbpp/601", "HumanEval/0", "MbppPlus/2", "HumanEvalPlus/0".
    external_id: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)  # the problem text ({PROBLEM} of the prompt template)
    entry_point: Mapped[str | None] = mapped_column(String(128))
    reference_solution: Mapped[str | None] = mapped_column(Text)
    code_prefix: Mapped[str] = mapped_column(Text, default="")  # runs before the candidate's code
    setup_code: Mapped[str] = mapped_column(Text, default="")  # runs after the code, before the tests
    shown_tests: Mapped[list[Any]] = mapped_column(default=list)  # test statements shown in the prompt
    public_tests: Mapped[list[Any]] = mapped_column(default=list)
    private_tests: Mapped[list[Any]] = mapped_column(default=list)
    public_suite_hash: Mapped[str] = mapped_column(String(64))
    private_suite_hash: Mapped[str] = mapped_column(String(64))
    suite_hash: Mapped[str] = mapped_column(String(64))  # hash over everything that decides a verdict
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    dataset: Mapped[Dataset] = relationship(back_populates="problems")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (Index("ix_model_versions_kind", "kind"), one_of("kind", MODEL_KINDS))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # generator | verifier
    base_model: Mapped[str] = mapped_column(Text)  # hub name, local path or pulled name
    uri: Mapped[str] = mapped_column(Text)  # what a backend loads (path or hub name)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    round_id: Mapped[int | None] = mapped_column(
        ForeignKey("rounds.id", ondelete="SET NULL", use_alter=True)
    )
    training_set_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_sets.id", ondelete="SET NULL", use_alter=True)
    )
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    method: Mapped[str] = mapped_column(String(32))  # mucode | multi_rft | rft | ...
    base_model: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # frozen at creation
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())

    rounds: Mapped[list[Round]] = relationship(back_populates="experiment", order_by="Round.index")


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("experiment_id", "index"), one_of("status", RUN_STATUSES))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    generator_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))  # collects
    verifier_in_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))  # scores collect
    verifier_out_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    generator_out_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    steps: Mapped[dict[str, Any]] = mapped_column(default=dict)  # per-step state, errors and timings
    # the experiment's last round: evaluates its own generator, trains none (app/rounds.py)
    final: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    experiment: Mapped[Experiment] = relationship(back_populates="rounds")


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_round", "round_id"), one_of("status", RUN_STATUSES))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    generator_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    verifier_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    dataset: Mapped[str] = mapped_column(String(64))
    split: Mapped[str | None] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))  # greedy | bon
    selector: Mapped[str | None] = mapped_column(String(16))  # random | lv | pt | pt+lv
    num_candidates: Mapped[int] = mapped_column(Integer, default=1)  # N per turn
    num_chains: Mapped[int] = mapped_column(Integer, default=1)  # C per problem
    max_turns: Mapped[int] = mapped_column(Integer, default=3)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Rollout(Base):
    """One trajectory (training) or one chain (evaluation) of one problem."""

    __tablename__ = "rollouts"
    __table_args__ = (
        CheckConstraint("(round_id IS NULL) <> (evaluation_id IS NULL)", name="owner"),
        # Natural keys: partial unique indexes because exactly one owner column is set.
        Index(
            "uq_rollouts_round_problem_sample",
            "round_id",
            "problem_id",
            "sample_index",
            unique=True,
            postgresql_where=text("round_id IS NOT NULL"),
            sqlite_where=text("round_id IS NOT NULL"),
        ),
        Index(
            "uq_rollouts_evaluation_problem_sample",
            "evaluation_id",
            "problem_id",
            "sample_index",
            unique=True,
            postgresql_where=text("evaluation_id IS NOT NULL"),
            sqlite_where=text("evaluation_id IS NOT NULL"),
        ),
        Index("ix_rollouts_problem", "problem_id"),
        Index("ix_rollouts_status", "status"),
        one_of("status", ROLLOUT_STATUSES),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"))
    generator_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    sample_index: Mapped[int] = mapped_column(Integer)  # rollout m of M, or chain c of C
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="active")
    num_turns: Mapped[int] = mapped_column(Integer, default=0)
    final_label: Mapped[bool | None] = mapped_column(Boolean)  # private suite of the last turn passed
    public_passed: Mapped[bool | None] = mapped_column(Boolean)  # the stop-rule outcome of the last turn
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    turns: Mapped[list[Turn]] = relationship(back_populates="rollout", order_by="Turn.index")


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("rollout_id", "index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)  # 1-based
    messages: Mapped[list[Any]] = mapped_column()  # the exact chat messages shown to the model
    feedback: Mapped[str | None] = mapped_column(Text)  # public feedback of the chosen candidate
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())

    rollout: Mapped[Rollout] = relationship(back_populates="turns")
    candidates: Mapped[list[Candidate]] = relationship(back_populates="turn", order_by="Candidate.sample_index")


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("turn_id", "sample_index"),
        Index("ix_candidates_code_hash", "code_hash"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    turn_id: Mapped[int] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"))
    sample_index: Mapped[int] = mapped_column(Integer, default=0)  # n of N in a Best-of-N turn
    response: Mapped[str] = mapped_column(Text)  # raw model text
    code: Mapped[str] = mapped_column(Text)  # extracted program
    code_hash: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    sampling: Mapped[dict[str, Any]] = mapped_column(default=dict)  # params and seed
    chosen: Mapped[bool] = mapped_column(Boolean, default=True)
    # Verdicts copied from this code's executions when they are written (NULL = not executed yet), so the
    # trainers, the selectors and the dashboard read labels without joining through the execution cache.
    public_passed: Mapped[bool | None] = mapped_column(Boolean)
    private_passed: Mapped[bool | None] = mapped_column(Boolean)  # the oracle label
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())

    turn: Mapped[Turn] = relationship(back_populates="candidates")


class Execution(Base):
    """One run of one program on one test suite; shared by every candidate with the same code."""

    __tablename__ = "executions"
    __table_args__ = (
        UniqueConstraint("code_hash", "suite_hash", "suite_kind", "sandbox_version"),
        Index("ix_executions_status", "status"),
        one_of("status", EXEC_STATUSES),
        one_of("suite_kind", SUITE_KINDS),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    suite_hash: Mapped[str] = mapped_column(String(64))
    suite_kind: Mapped[str] = mapped_column(String(8))  # public | private
    sandbox_version: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    passed: Mapped[bool] = mapped_column(Boolean)
    tests: Mapped[list[Any]] = mapped_column(default=list)  # [{"test", "outcome", "message"}...]
    feedback: Mapped[str] = mapped_column(Text, default="")  # sanitized text for the model
    stdout: Mapped[str] = mapped_column(Text, default="")
    stderr: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class VerifierScore(Base):
    __tablename__ = "verifier_scores"
    __table_args__ = (Index("ix_verifier_scores_verifier", "verifier_id"),)

    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True
    )
    verifier_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class TrainingSet(Base):
    """A frozen training dataset (verifier pairs, BCE rows or SFT examples) built from the store."""

    __tablename__ = "training_sets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # bt | bce | sft
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class VerifierPair(Base):
    """A drawn Bradley-Terry pair, stored so a verifier run can be repeated exactly."""

    __tablename__ = "verifier_pairs"
    __table_args__ = (UniqueConstraint("training_set_id", "problem_id", "pair_index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    training_set_id: Mapped[int] = mapped_column(ForeignKey("training_sets.id", ondelete="CASCADE"))
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"))
    pair_index: Mapped[int] = mapped_column(Integer)
    chosen_candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"))
    rejected_candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"))


class SftExample(Base):
    """One generator training example: the history of ``rollout`` before turn ``turn_index`` -> target."""

    __tablename__ = "sft_examples"
    __table_args__ = (
        UniqueConstraint("training_set_id", "rollout_id", "turn_index"),
        Index("ix_sft_examples_problem", "problem_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    training_set_id: Mapped[int] = mapped_column(ForeignKey("training_sets.id", ondelete="CASCADE"))
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"))
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    turn_index: Mapped[int] = mapped_column(Integer)  # the state is the history before this turn
    target_candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16))  # relabeled | positive
    verifier_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))


class EvaluationResult(Base):
    """Per problem, chain and turn: the pick and whether it passed."""

    __tablename__ = "evaluation_results"
    __table_args__ = (UniqueConstraint("evaluation_id", "problem_id", "chain_index", "turn_index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"))
    chain_index: Mapped[int] = mapped_column(Integer)
    turn_index: Mapped[int] = mapped_column(Integer)
    candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id", ondelete="SET NULL"))
    public_passed: Mapped[bool] = mapped_column(Boolean)
    private_passed: Mapped[bool] = mapped_column(Boolean)
    solved: Mapped[bool] = mapped_column(Boolean)  # solved at or before this turn (cumulative)


class Job(Base):
    """Every queued unit of work: its state, attempts, error and timing. ``key`` makes queueing idempotent."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_kind", "state", "kind"),
        one_of("state", JOB_STATES),
        Index("ix_jobs_round", "round_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # sample | execute | score | train_verifier | ...
    queue: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
