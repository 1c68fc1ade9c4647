"""Request and response models of the REST API (docs/deployment.md): one family per resource
(``XCreate`` in, ``XPublic`` out, ``XsPublic{items, count}`` for lists)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetSummary(_Out):
    """A dataset in a list: bounded size (no class names, no column names; read the dataset for those)."""

    id: str
    name: str
    filename: str
    sha256: str = Field(description="SHA-256 of the uploaded file")
    size_bytes: int = Field(description="size of the uploaded file")
    blob_sha256: str = Field(description="SHA-256 of the stored canonical .npz (content address)")
    n_samples: int
    shape: list[int]
    n_classes: int | None
    created_at: datetime


class DatasetPublic(DatasetSummary):
    """One dataset with its details: class names and ``meta`` (source format, preprocessing, feature columns)."""

    classes: list[str] | None
    meta: dict[str, Any]


class DatasetsPublic(BaseModel):
    items: list[DatasetSummary]
    count: int = Field(description="total number of datasets of this key's owner")
    limit: int
    offset: int


def _no_nul(value: Any, where: str = "") -> None:
    """PostgreSQL cannot store NUL in text or jsonb; refuse it in every request body on both backends (422)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where or 'a string'} contains a NUL character (\\u0000), which cannot be stored")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_nul(k, f"{where}.{k}".lstrip(".") if isinstance(k, str) else where)
            _no_nul(v, f"{where}.{k}".lstrip("."))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_nul(v, f"{where}[{i}]")


class _In(BaseModel):
    """Base of the JSON request bodies: unknown fields and NUL characters are refused."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any) -> Any:
        _no_nul(data)
        return data


class ModelSpecCreate(_In):
    name: str = Field(default="model", max_length=300)
    spec: dict[str, Any] = Field(
        description='docs/methods.md §4, e.g. {"arch": "mlp", "hidden": [200, 200], "train": {"epochs": 10}}',
        examples=[{"arch": "mlp", "hidden": [200, 200]}],
    )


class ModelWeightsPublic(BaseModel):
    """Uploaded weights of a model spec (multipart ``POST /model-specs``)."""

    format: Literal["safetensors", "hf-zip"] = Field(
        description="safetensors: weights of an arch spec; hf-zip: a Hugging Face-style model directory"
    )
    sha256: str = Field(description="SHA-256 of the stored blob (content address)")
    size_bytes: int = Field(description="size of the uploaded file")
    meta: dict[str, Any] = Field(
        description="what the upload check found: file name, numbers of weights and tensors; safetensors: "
        "input_shape, n_classes, tensor shapes; hf-zip: model_type, hidden_size, n_layers, files"
    )


class ModelSpecPublic(_Out):
    id: str
    name: str
    spec: dict[str, Any]
    weights: ModelWeightsPublic | None = Field(None, description="uploaded weights; null for a spec without")
    created_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: Any) -> Any:
        """A ``db.ModelSpec`` row: its ``weights_*`` columns become ``weights``."""
        sha = getattr(data, "weights_sha256", None)
        if isinstance(data, dict) or not hasattr(data, "spec"):
            return data
        weights = None
        if sha is not None:
            weights = {
                "format": data.weights_format,
                "sha256": sha,
                "size_bytes": data.weights_size_bytes or 0,
                "meta": data.weights_meta or {},
            }
        return {"id": data.id, "name": data.name, "spec": data.spec, "weights": weights, "created_at": data.created_at}


class ModelSpecsPublic(BaseModel):
    items: list[ModelSpecPublic]
    count: int


Device = Literal["auto", "cpu", "cuda"]


class AnalysisCreate(_In):
    dataset_id: str
    estimators: dict[str, dict[str, Any] | None] | None = Field(
        default=None,
        description="estimator name → params (null or {} for the defaults). Omitted: mle, twonn, gride.",
        examples=[{"mle": {"k": 20}, "twonn": None}],
    )
    model_spec_id: str | None = None
    device: Device = Field(
        default="auto",
        description="auto: the worker's TASKGAUGE_DEVICE; cuda: routed to the `gpu` queue (CUDA workers).",
    )


class AnalysisPublic(_Out):
    id: str
    dataset_id: str
    model_spec_id: str | None
    schedule_id: str | None
    estimators: dict[str, Any]
    device: str
    queue: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float = Field(ge=0, le=1)
    stage: str | None
    error: dict[str, Any] | None = Field(description="RFC 9457 problem document when status is failed")
    report_id: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AnalysesPublic(BaseModel):
    items: list[AnalysisPublic]
    count: int
    limit: int
    offset: int


class CompareColumn(BaseModel):
    report_id: str
    dataset_id: str
    dataset_name: str | None
    created_at: datetime


class CompareRow(BaseModel):
    estimator: str
    values: list[float | str | None]
    versions: list[str | None]


class ComparePublic(BaseModel):
    reports: list[CompareColumn]
    rows: list[CompareRow]


class ScheduleCreate(_In):
    dataset_id: str
    cron: str = Field(examples=["0 3 * * *"], description="5 fields (minute hour day month weekday), or 6 with seconds")
    timezone: str = Field(default="UTC", examples=["Europe/Berlin"])
    estimators: dict[str, dict[str, Any] | None] | None = None
    model_spec_id: str | None = None


class SchedulePublic(_Out):
    id: str
    dataset_id: str
    model_spec_id: str | None
    estimators: dict[str, Any]
    cron: str
    timezone: str
    enabled: bool
    next_run_at: datetime
    last_run_at: datetime | None
    created_at: datetime


class SchedulesPublic(BaseModel):
    items: list[SchedulePublic]
    count: int


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok"]
    database: str
    broker: str
    blobs: str = Field(description="The blob store: ok (its URL)")
    worker: str | None = Field(default=None, description="the embedded worker of `taskgauge serve`, when it has one")


class WorkerTask(BaseModel):
    task: str = Field(description="Celery task name, e.g. taskgauge.run_analysis")
    id: str = Field(description="Celery task id")
    args: list[str] = Field(default_factory=list, description="Its arguments (analysis id, a shard's key)")
    analysis_id: str | None = Field(default=None, description="The analysis this task works on")
    started_at: float | None = Field(default=None, description="When the task started (Unix time)")
    status: str | None = Field(default=None, description="The analysis' status")
    stage: str | None = Field(default=None, description="The analysis' current stage")
    progress: float | None = Field(default=None, description="The analysis' progress, 0..1")


class WorkerPublic(BaseModel):
    name: str = Field(description="Celery node name (taskgauge-…@host)")
    hostname: str
    pid: int
    queues: list[str] = Field(description="Queues it consumes (default, gpu)")
    concurrency: int = Field(description="Analyses it runs at once")
    device: str = Field(description="Where its analyses run: cpu or cuda:0 (GPU name)")
    version: str
    started_at: datetime
    heartbeat_at: datetime = Field(description="Its last heartbeat (every TASKGAUGE_HEARTBEAT_S)")
    live: bool = Field(description="Heartbeat younger than TASKGAUGE_LEASE_S")
    active: list[WorkerTask] = Field(description="Tasks it runs now")


class WorkersPublic(BaseModel):
    items: list[WorkerPublic]
    count: int
