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

from pydantic import Field, SecretStr, field_validator, model_validator
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
        default=0,
        ge=0,
        description="torch/BLAS/faiss threads of each worker child. 0: its share of the cores, "
        "max(1, cores // concurrency).",
    )
    LEASE_S: float = Field(
        default=60.0,
        gt=0,
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
    BLOB_URL: str = Field(
        default="",
        description="Where the blob store lives: file:///DIR, or s3://BUCKET/PREFIX for an S3-compatible store "
        "every host can reach (MinIO, AWS S3). Empty: file://DATA_DIR/blobs.",
    )
    S3_ENDPOINT_URL: str = Field(
        default="", description="S3 endpoint for s3:// blob URLs, e.g. http://minio:9000. Empty: AWS S3."
    )
    S3_REGION: str = Field(default="", description="S3 region. Empty: boto3's default (AWS_DEFAULT_REGION, …).")
    S3_ACCESS_KEY_ID: str = Field(
        default="", description="S3 access key. Empty: boto3's default chain (AWS_ACCESS_KEY_ID, instance role, …)."
    )
    S3_SECRET_ACCESS_KEY: SecretStr = Field(default=SecretStr(""), description="S3 secret key (with S3_ACCESS_KEY_ID).")
    ADMIN_OWNERS: str = Field(
        default="",
        description="Comma-separated owner names whose API keys may use the admin endpoints (GET /api/v1/workers). "
        "With the embedded broker, the owner 'local' (the local key) is an admin too.",
    )

    FANOUT: bool = Field(
        default=False,
        description="Run the estimators of one analysis as parallel tasks (one shard each), so that one analysis "
        "uses as many workers as are free. Off: one task per analysis.",
    )
    FANOUT_TRIALS: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Trial groups in flight at once in a fanned-out subspace sweep (the next d plus the speculative "
        "trials it is likeliest to need besides it; the result is the same). 0: as many as live workers consume the "
        "trials' queue.",
    )
    KNN_SHARD_ROWS: int = Field(
        default=50_000,
        ge=0,
        description="With FANOUT: a dataset with more rows than this has the exact kNN of mle, twonn and gride "
        "computed once, split into ceil(rows / KNN_SHARD_ROWS) parts (at most 64) that run as separate shard "
        "tasks and are merged exactly; the three estimators then read the merged table. 0: never split.",
    )

    # -- web surface hardening (issue 15)
    ALLOWED_HOSTS: str = Field(
        default="",
        description="Comma-separated host names (no port) the API answers to; any other Host header gets 400 "
        "(DNS rebinding). '*' accepts any. Empty: loopback names (localhost, 127.0.0.1, ::1) in the embedded "
        "default, any host otherwise.",
    )
    MAX_JSON_BODY_KB: int = Field(
        default=1024,
        ge=1,
        description="Largest request body that is not multipart/form-data (JSON bodies), in KiB (413 above). "
        "Uploads are multipart and limited by MAX_UPLOAD_MB.",
    )
    GPU_WORKERS: Literal["auto", "yes", "no"] = Field(
        default="auto",
        description="Whether a worker consumes the gpu queue (device=cuda analyses are refused with 409 when not). "
        "auto: in the embedded default, whether CUDA is available here (the embedded worker takes the gpu queue "
        "then); with a broker, whether a live worker answers a Celery inspect with the gpu queue (1 s timeout, "
        "cached for 30 s).",
    )
    SIGNIN_TOKEN_TTL_S: float = Field(
        default=3600.0,
        gt=0,
        description="How long the one-time dashboard sign-in link that `taskgauge serve` prints stays valid.",
    )

    EMBEDDED_WORKER: bool = Field(
        default=False,
        description="Internal: set by `taskgauge serve` on its own worker child, which then writes the ready marker "
        "the supervisor (and /readyz) waits for.",
    )

    @field_validator("DEVICE", mode="before")
    @classmethod
    def _device_lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        self.DATA_DIR = self.DATA_DIR.expanduser().resolve()
        if not self.DATABASE_URL.strip():
            self.DATABASE_URL = f"sqlite:///{self.DATA_DIR / 'taskgauge.db'}"
        url = self.BLOB_URL.strip()
        if url and not (url.startswith("file:///") or (url.startswith("s3://") and len(url) > len("s3://"))):
            raise ValueError(f"BLOB_URL must be file:///DIR or s3://BUCKET[/PREFIX], not {url!r}")
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
    def blob_url(self) -> str:
        """``BLOB_URL``, or ``file://DATA_DIR/blobs`` when it is empty (the embedded default)."""
        return self.BLOB_URL.strip() or self.blob_dir.as_uri()

    @property
    def admin_owners(self) -> frozenset[str]:
        """Owner names that are admins: ``ADMIN_OWNERS``, plus ``local`` with the embedded broker."""
        names = {n.strip() for n in self.ADMIN_OWNERS.split(",") if n.strip()}
        if self.embedded_broker:
            names.add("local")
        return frozenset(names)

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

    @property
    def embedded(self) -> bool:
        """The embedded default: SQLite and no broker configured."""
        return self.is_sqlite and self.embedded_broker

    @property
    def allowed_hosts(self) -> frozenset[str] | None:
        """The accepted ``Host`` names (lower case, no port), or None for any host."""
        names = {h.strip().lower().strip("[]") for h in self.ALLOWED_HOSTS.split(",") if h.strip()}
        if "*" in names:
            return None
        if names:
            return frozenset(names)
        return frozenset({"localhost", "127.0.0.1", "::1"}) if self.embedded else None

    @property
    def max_json_body_bytes(self) -> int:
        return self.MAX_JSON_BODY_KB * 1024

    # ---- uploads and stored data (issue 15)
    MAX_CONCURRENT_INGESTS: int = Field(
        default=2,
        ge=1,
        description="Uploads parsed at the same time by one API process; more wait (INGEST_QUEUE_S) for a slot.",
    )
    INGEST_QUEUE_S: float = Field(
        default=120.0,
        ge=0,
        description="How long an upload waits for an ingest slot before 503 + Retry-After (seconds).",
    )
    INGEST_MEMORY_MB: int = Field(
        default=0,
        ge=0,
        description="Memory (address space) one ingest subprocess may use on top of its imports, in MB. "
        "0: 2 × the expansion limit + 512. Ingestion takes at most MAX_CONCURRENT_INGESTS × this.",
    )
    INGEST_TIMEOUT_S: float = Field(
        default=600.0, gt=0, description="An ingest subprocess running longer is stopped (413)."
    )
    INGEST_NICE: int = Field(
        default=10,
        ge=0,
        le=19,
        description="The ingest subprocesses run this many nice steps below the API process, so that on a busy CPU "
        "the API's answers come before the parsing of uploads. 0: the same priority.",
    )
    MAX_CLASSES: int = Field(default=10_000, ge=1, description="Most classes a dataset may have (413 above).")
    MAX_COLUMNS: int = Field(default=100_000, ge=1, description="Most columns of a .csv/.parquet table (413 above).")

    @property
    def expansion_limit_mb(self) -> int:
        """How far an upload may expand once read (zip contents, arrays, tables): 64× the upload limit, at most
        2 GB."""
        return min(2048, 64 * self.MAX_UPLOAD_MB)

    @property
    def ingest_memory_bytes(self) -> int:
        mb = self.INGEST_MEMORY_MB or 2 * self.expansion_limit_mb + 512
        return mb * 1024 * 1024

    # ---- limits on what an analysis may ask for, crash loops, fairness (issue 15; helper "limits") ----
    MAX_ATTEMPTS: int = Field(
        default=3,
        ge=1,
        description="An analysis whose worker died this many times (killed, e.g. out of memory) ends failed "
        "instead of being re-queued again.",
    )
    TASK_SOFT_TIME_LIMIT_S: float = Field(
        default=5 * 3600.0,
        gt=0,
        description="An analysis running longer than this is stopped and ends failed (Celery soft time limit).",
    )
    TASK_HARD_TIME_LIMIT_S: float = Field(
        default=5 * 3600.0 + 120.0,
        gt=0,
        description="Its worker child is killed this long after it started (Celery hard time limit; above the soft "
        "one, so the soft limit can end the analysis cleanly first).",
    )
    WORKER_MAX_MEMORY_PER_CHILD_MB: int = Field(
        default=8192,
        ge=0,
        description="A worker child whose resident memory is above this after a task is replaced by a fresh one "
        "(Celery worker_max_memory_per_child). 0: never.",
    )
    MAX_MODEL_PARAMS: int = Field(
        default=50_000_000,
        ge=1,
        description="Largest model (parameters, counted from the spec and the dataset's shape before anything is "
        "built) an analysis may train; larger specs, and uploaded weights holding more numbers, are refused with 422.",
    )
    MAX_ACTIVE_ANALYSES_PER_OWNER: int = Field(
        default=20,
        ge=0,
        description="Queued + running analyses one owner may have at once (429 above). 0: no limit.",
    )
    MAX_STORAGE_MB_PER_OWNER: int = Field(
        default=20_480,
        ge=0,
        description="Total size of one owner's uploaded datasets, in MB (429 above). 0: no limit.",
    )
    MIN_SCHEDULE_INTERVAL_S: float = Field(
        default=60.0,
        ge=0,
        description="Schedules that would fire more often than this are refused (422).",
    )
    RATE_LIMIT_POST: str = Field(
        default="300/minute",
        description="Rate limit of each API key (or client address) on POST routes, in slowapi's syntax "
        "('60/minute', '10/second;200/hour'). Empty: no limit.",
    )
    EMBEDDED_CONCURRENCY: int = Field(
        default=2,
        ge=1,
        description="Analyses the embedded worker of `taskgauge serve` runs in parallel (one owner's long "
        "analysis does not block another's short one).",
    )
    SQLITE_BUSY_TIMEOUT_S: float = Field(
        default=10.0,
        gt=0,
        description="SQLite: how long a writer waits for the write lock before the request is answered 503 "
        "(Retry-After).",
    )

    @property
    def hard_time_limit_s(self) -> float:
        """The hard limit, at least a minute past the soft one."""
        return max(self.TASK_HARD_TIME_LIMIT_S, self.TASK_SOFT_TIME_LIMIT_S + 60.0)

    def memory_budget_cap(self) -> int | None:
        """The operator's cap on a request's ``memory_budget_mb``: ``MEMORY_BUDGET_MB`` when it was set explicitly
        (None: each estimator's own default is the cap)."""
        return self.memory_budget_override


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests that change ``TASKGAUGE_*`` call ``get_settings.cache_clear()``."""
    return Settings()
