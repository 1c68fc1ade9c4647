"""All configuration, in one pydantic-settings class (DESIGN.md §8).

Every field is read from the environment with the prefix ``TASKGAUGE_`` (``TASKGAUGE_DATA_DIR=/srv/tg``), or from
a ``.env`` file in the working directory. With nothing set, taskgauge runs embedded: an SQLite database and the
blobs under ``DATA_DIR`` (default ``./.taskgauge``), and an empty ``BROKER_URL``/``RESULT_BACKEND`` meaning
"embedded" (``taskgauge serve`` starts its own worker over a serverless transport).

>>> import os
>>> os.environ["TASKGAUGE_DATA_DIR"] = "/tmp/tg-doc"
>>> get_settings.cache_clear(); s = get_settings()
>>> s.DATABASE_URL
'sqlite:////tmp/tg-doc/taskgauge.db'
>>> s.embedded_broker
True
>>> del os.environ["TASKGAUGE_DATA_DIR"]; get_settings.cache_clear()
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """taskgauge's settings. Field names are the environment names without the ``TASKGAUGE_`` prefix."""

    model_config = SettingsConfigDict(
        env_prefix="TASKGAUGE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    DATA_DIR: Path = Field(
        default=Path("./.taskgauge"),
        description="Where the embedded database, the blob store and the local API key live. Made absolute.",
    )
    DATABASE_URL: str = Field(
        default="",
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/taskgauge. "
        "Empty: SQLite file DATA_DIR/taskgauge.db.",
    )
    BROKER_URL: str = Field(
        default="", description="Celery broker, e.g. redis://localhost:6379/0. Empty: embedded (serverless) broker."
    )
    RESULT_BACKEND: str = Field(default="", description="Celery result backend. Empty: embedded.")
    MAX_UPLOAD_MB: int = Field(default=512, ge=1, description="Largest accepted upload, in MB (413 above).")
    DEVICE: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where estimators run: auto (CUDA when present), cpu or cuda."
    )
    MEMORY_BUDGET_MB: int = Field(
        default=1024, ge=16, description="Memory the kNN engine may use for one chunk of distances, in MB."
    )

    @field_validator("DEVICE", mode="before")
    @classmethod
    def _device_lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _embedded_defaults(self) -> "Settings":
        self.DATA_DIR = self.DATA_DIR.expanduser().resolve()
        if not self.DATABASE_URL.strip():
            self.DATABASE_URL = f"sqlite:///{self.DATA_DIR / 'taskgauge.db'}"
        return self

    @property
    def embedded_broker(self) -> bool:
        """True when no broker is configured: the embedded, serverless transport is used."""
        return not self.BROKER_URL.strip()

    @property
    def embedded_result_backend(self) -> bool:
        return not self.RESULT_BACKEND.strip()

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")

    @property
    def max_upload_bytes(self) -> int:
        return self.MAX_UPLOAD_MB * 1024 * 1024


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests that change ``TASKGAUGE_*`` call ``get_settings.cache_clear()``."""
    return Settings()
