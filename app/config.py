"""One settings object for the whole system (environment variables prefixed ``MUCODE_``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The benchmark files shipped inside the package (app/data/benchmarks, with their SHA256SUMS and licences).
PACKAGED_DATA_DIR = Path(__file__).resolve().parent / "data" / "benchmarks"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUCODE_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///mucode.db",
        description="SQLAlchemy URL. Defaults to a SQLite file in the working directory.",
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker (redis://..., amqp://...). None runs jobs in-process."
    )
    data_dir: Path = Field(
        default=PACKAGED_DATA_DIR,
        description="Benchmark data (MBPP, HumanEval...); by default the copy installed with mucode.",
    )
    model_cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "mucode" / "models",
        description="Where pulled and trained models are kept.",
    )
    artifacts_dir: Path = Field(
        default_factory=lambda: Path("mucode-data"), description="Checkpoints, exports and run artifacts."
    )
    allow_weak_isolation: bool = Field(
        default=False,
        description="Run the sandbox even when namespaces or an unprivileged uid are unavailable.",
    )
    sandbox_workers: int = Field(default=0, description="Parallel sandbox children; 0 = number of CPUs.")
    heartbeat_s: float = Field(
        default=10.0, gt=0,
        description="How often a worker tells the broker it is alive and which jobs it runs (a worker silent for "
        "3 heartbeats is gone).",
    )
    healer_sweep_s: float = Field(
        default=20.0, gt=0, description="How often a control worker looks for rounds whose work was lost.")
    healer_grace_s: float = Field(
        default=60.0, gt=0,
        description="A job queued or started this long ago that no worker runs and no queue holds is lost.")
    outage_wait_s: float = Field(
        default=3600.0, ge=0,
        description="How long a job waits, running again with backoff, for an unreachable database or broker to "
        "come back before it gives up (MUCODE_OUTAGE_WAIT_S).",
    )
    tracking: Literal["none", "tensorboard", "mlflow", "wandb"] = Field(
        default="none",
        description="Where trainers log their curves and rounds their results (MUCODE_TRACKING); an experiment's "
        "own `tracking` overrides it (app/tracking.py).",
    )
    tracking_uri: str | None = Field(
        default=None,
        description="TensorBoard folder, MLflow tracking URI or W&B local folder (MUCODE_TRACKING_URI); default: "
        "under <artifacts_dir>/tracking.",
    )
    # The `server` sampling backend (workers/backends/openai_server.py): an OpenAI-compatible server such as
    # `vllm serve`, SGLang or a router in front of several.
    server_url: str | None = Field(
        default=None, description="The sampling server's URL, e.g. http://gpu-host:8000 (MUCODE_SERVER_URL).")
    server_api_key: str | None = Field(
        default=None, description="Bearer token for the sampling server (vllm serve --api-key).")
    server_model: str | None = Field(
        default=None,
        description="The model's name on the sampling server (vllm serve --served-model-name); default: the "
        "model's path or hub name.",
    )
    server_concurrency: int = Field(default=16, ge=1, description="Requests in flight at once per sampling job.")
    server_timeout_s: float = Field(default=600.0, gt=0, description="Seconds one completion request may take.")
    server_max_retries: int = Field(
        default=5, ge=0, description="Tries again after a connection error, a timeout, 429 or 5xx (with backoff).")
    server_dialect: Literal["auto", "vllm", "transformers", "openai"] = Field(
        default="auto",
        description="What the server accepts: vllm (token-id prompts and every sampling knob; vLLM, SGLang), "
        "transformers (transformers serve), openai (plain fields); auto tries them in that order.",
    )

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_name(cls, v: object) -> object:
        return "none" if v in ("", None) else str(v).strip().lower()

    @field_validator("tracking_uri", mode="before")
    @classmethod
    def _empty_uri_is_none(cls, v: object) -> object:
        return None if v in ("", "none", "None") else v

    @field_validator("broker_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v in ("", "none", "None") else v

    @field_validator("database_url")
    @classmethod
    def _normalize_pg_driver(cls, v: str) -> str:
        # psycopg 3 is the driver; accept the plain postgres:// spellings users paste.
        for prefix in ("postgres://", "postgresql://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix):]
        return v


# Settings a caller put in force for a block (``use_settings``); the innermost wins over the environment's.
_in_force: list[Settings] = []


@lru_cache(maxsize=1)
def _from_environment() -> Settings:
    return Settings()


def get_settings() -> Settings:
    """The settings in force: those of the innermost ``use_settings`` block, else the environment's (read
    once; ``get_settings.cache_clear()`` reads the environment again)."""
    return _in_force[-1] if _in_force else _from_environment()


get_settings.cache_clear = _from_environment.cache_clear  # type: ignore[attr-defined]


@contextmanager
def use_settings(settings: Settings) -> Iterator[Settings]:
    """Within the block, every reader of ``get_settings()`` in this process (in-process jobs of workers and
    trainers included) gets ``settings``: a caller runs with its own settings, ``os.environ`` untouched."""
    _in_force.append(settings)
    try:
        yield settings
    finally:
        _in_force.pop()
