"""One settings object for the whole system (environment variables prefixed ``MUCODE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
