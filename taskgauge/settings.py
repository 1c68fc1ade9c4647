"""All configuration, in one pydantic-settings class (docs/deployment.md).

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

    WORKER_THREADS: int = Field(
        default=0, ge=0,
        description="torch/BLAS/faiss threads of each worker child. 0: its share of the cores, "
        "max(1, cores // concurrency).",
    )
    LEASE_S: float = Field(
        default=60.0, gt=0,
        description="A running analysis whose worker has not heartbeated for this long is re-queued (seconds).",
    )
    HEARTBEAT_S: float = Field(default=5.0, gt=0, description="How often a running analysis refreshes its heartbeat.")
    PROGRESS_INTERVAL_S: float = Field(
        default=0.5, ge=0, description="Progress writes are throttled to one per interval (and per stage change)."
    )
    VISIBILITY_TIMEOUT_S: int = Field(
        default=6 * 3600, gt=0, description="Redis visibility timeout: longer than the longest analysis (seconds)."
    )
    SCHEDULE_SCAN_SECONDS: float = Field(
        default=30.0, gt=0, description="How often Celery beat asks a worker to scan for due schedules."
    )

    FANOUT: bool = Field(
        default=False,
        description="Run the estimators of one analysis as parallel tasks (one shard each), so that one analysis "
        "uses as many workers as are free. Off: one task per analysis.",
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
    def blob_dir(self) -> Path:
        return self.DATA_DIR / "blobs"

    @property
    def broker_dir(self) -> Path:
        return self.DATA_DIR / "broker"

    @property
    def memory_budget_override(self) -> int | None:
        """``MEMORY_BUDGET_MB`` when it was set explicitly (it then replaces the estimators' own default)."""
        return self.MEMORY_BUDGET_MB if "MEMORY_BUDGET_MB" in self.model_fields_set else None

    def worker_threads(self, concurrency: int = 1) -> int:
        """Threads per worker child: ``WORKER_THREADS``, or the child's share of the cores."""
        import os

        if self.WORKER_THREADS:
            return self.WORKER_THREADS
        return max(1, (os.cpu_count() or 1) // max(1, concurrency))

    @property
    def max_upload_bytes(self) -> int:
        return self.MAX_UPLOAD_MB * 1024 * 1024

    # ---- uploads and stored data (issue 15)
    MAX_CONCURRENT_INGESTS: int = Field(
        default=2, ge=1,
        description="Uploads parsed at the same time by one API process; more wait (INGEST_QUEUE_S) for a slot.",
    )
    INGEST_QUEUE_S: float = Field(
        default=30.0, ge=0,
        description="How long an upload waits for an ingest slot before 503 + Retry-After (seconds).",
    )
    INGEST_MEMORY_MB: int = Field(
        default=0, ge=0,
        description="Memory (address space) one ingest subprocess may use on top of its imports, in MB. "
        "0: 2 × the expansion limit + 512. Ingestion takes at most MAX_CONCURRENT_INGESTS × this.",
    )
    INGEST_TIMEOUT_S: float = Field(
        default=600.0, gt=0, description="An ingest subprocess running longer is stopped (413)."
    )
    MAX_CLASSES: int = Field(default=10_000, ge=1, description="Most classes a dataset may have (413 above).")
    MAX_COLUMNS: int = Field(default=100_000, ge=1, description="Most columns of a .csv/.parquet table (413 above).")
    MAX_JSON_KB: int = Field(
        default=1024, ge=1, description="Largest request body other than an upload (JSON), in KB (413 above)."
    )

    @property
    def expansion_limit_mb(self) -> int:
        """How far an upload may expand once read (zip contents, arrays, tables): 64× the upload limit, at most
        2 GB."""
        return min(2048, 64 * self.MAX_UPLOAD_MB)

    @property
    def ingest_memory_bytes(self) -> int:
        mb = self.INGEST_MEMORY_MB or 2 * self.expansion_limit_mb + 512
        return mb * 1024 * 1024


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests that change ``TASKGAUGE_*`` call ``get_settings.cache_clear()``."""
    return Settings()
