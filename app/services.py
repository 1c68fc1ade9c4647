"""Service functions behind the routes: they raise :mod:`app.errors` (never ``HTTPException``), build
``select()`` statements, and own the transaction of the operation they perform."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.auth import Principal
from app.deps import AppState
from app.errors import Conflict, InvalidInput, ServiceUnavailable, not_found
from workers import db
from workers.blobstore import deterministic_npz
from workers.canonical import CanonicalDataset
from workers.celery_app import DEFAULT_QUEUE, GPU_QUEUE, enqueue_analysis

log = logging.getLogger("taskgauge.api")


# ------------------------------------------------------------------------------------------- datasets


def get_dataset(session: Session, owner: Principal, dataset_id: str) -> db.Dataset:
    row = session.scalar(select(db.Dataset).where(db.Dataset.id == dataset_id, db.Dataset.owner_id == owner.owner_id))
    if row is None:
        raise not_found("dataset", dataset_id, "list yours with GET /api/v1/datasets")
    return row


def store_dataset(state: AppState, owner: Principal, data: CanonicalDataset, *, name: str, filename: str,
                  sha256: str, size: int) -> db.Dataset:
    """Publish the canonical blob and write the dataset row in one transaction: both exist or neither.

    The blob row is upserted first (``ON CONFLICT DO UPDATE`` row-locks it, so a concurrent delete of the last
    dataset using the same blob waits); the file is then renamed into place if missing; the dataset row is
    inserted; commit. If anything fails after the file was created by this call and no blob row survives, the
    file is removed again.
    """
    payload = deterministic_npz(data.to_bytes())
    staged = state.blobs.stage(payload)
    created_file = False
    try:
        with state.sessions() as s, s.begin():
            s.execute(db.upsert_touch(db.Blob.__table__, s.get_bind().dialect.name,
                                      {"sha256": staged.sha256, "size": staged.size, "created_at": db.utcnow()},
                                      ["sha256"], "size"))
            created_file = state.blobs.publish(staged)
            row = db.Dataset(
                id=db.new_id(), owner_id=owner.owner_id, name=name, filename=filename, sha256=sha256,
                size_bytes=size, blob_sha256=staged.sha256, n_samples=data.n_samples, shape=list(data.X.shape),
                n_classes=data.n_classes, classes=data.classes, meta=data.meta, created_at=db.utcnow(),
            )
            s.add(row)
        return row
    except BaseException:
        state.blobs.discard(staged)
        if created_file:
            _gc_blob(state, staged.sha256)
        raise


def _gc_blob(state: AppState, sha256: str) -> None:
    """Remove a blob row and file when no dataset references it (under the blob row's lock)."""
    try:
        with state.sessions() as s, s.begin():
            blob = s.scalar(select(db.Blob).where(db.Blob.sha256 == sha256).with_for_update())
            if blob is not None:
                refs = s.scalar(select(func.count()).select_from(db.Dataset).where(db.Dataset.blob_sha256 == sha256))
                if refs:
                    return
                s.delete(blob)
                s.flush()
            state.blobs.delete(sha256)  # inside the lock: an upload of the same content waits for us
    except Exception:  # noqa: BLE001 - best effort; an orphan file is harmless and re-used by the next upload
        log.warning("could not garbage-collect blob %s", sha256, exc_info=True)


def delete_dataset(state: AppState, owner: Principal, dataset_id: str) -> None:
    with state.sessions() as s, s.begin():
        row = get_dataset(s, owner, dataset_id)
        sha = row.blob_sha256
        s.execute(select(db.Blob).where(db.Blob.sha256 == sha).with_for_update())
        s.execute(delete(db.Dataset).where(db.Dataset.id == row.id))
    _gc_blob(state, sha)


# ---------------------------------------------------------------------------------------- model specs


def validate_model_spec(spec: dict[str, Any]) -> dict[str, Any]:
    from estimators.models.spec import parse_model_spec

    parsed = parse_model_spec(spec)  # EstimatorError -> 422 problem
    return parsed.model_dump(mode="json")


def get_model_spec(session: Session, owner: Principal, spec_id: str) -> db.ModelSpec:
    row = session.scalar(select(db.ModelSpec).where(db.ModelSpec.id == spec_id, db.ModelSpec.owner_id == owner.owner_id))
    if row is None:
        raise not_found("model spec", spec_id, "list yours with GET /api/v1/model-specs")
    return row


# ------------------------------------------------------------------------------------------- analyses


def get_analysis(session: Session, owner: Principal, analysis_id: str) -> db.Analysis:
    row = session.scalar(select(db.Analysis).where(db.Analysis.id == analysis_id, db.Analysis.owner_id == owner.owner_id))
    if row is None:
        raise not_found("analysis", analysis_id, "list yours with GET /api/v1/analyses")
    return row


def check_requests(requests: dict[str, Any] | None, dataset: db.Dataset, spec: dict[str, Any] | None) -> dict[str, Any]:
    """Validate estimator names and params against the registry and the dataset (labels, sample count), without
    loading the data; returns the normalised request ``{name: params}``."""
    from workers.pipeline import DEFAULT_ESTIMATORS, plan

    requests = requests if requests else {name: {} for name in DEFAULT_ESTIMATORS}
    requests = {name: dict(params or {}) for name, params in requests.items()}
    shape_only = SimpleNamespace(y=None if dataset.n_classes is None else True, n_samples=dataset.n_samples)
    plan(requests, shape_only, model_spec=spec)  # type: ignore[arg-type] - duck-typed: only y and n_samples
    return requests


def create_analysis(state: AppState, owner: Principal, *, dataset_id: str, estimators: dict[str, Any] | None,
                    model_spec_id: str | None, device: str, schedule_id: str | None = None) -> db.Analysis:
    with state.sessions() as s, s.begin():
        dataset = get_dataset(s, owner, dataset_id)
        spec = get_model_spec(s, owner, model_spec_id).spec if model_spec_id else None
        requests = check_requests(estimators, dataset, spec)
        now = db.utcnow()
        row = db.Analysis(
            id=db.new_id(), owner_id=owner.owner_id, dataset_id=dataset.id, model_spec_id=model_spec_id,
            schedule_id=schedule_id, estimators=requests, device=device,
            queue=GPU_QUEUE if device == "cuda" else DEFAULT_QUEUE, status=db.QUEUED, progress=0.0,
            stage="queued", attempts=0, created_at=now, updated_at=now,
        )
        s.add(row)
    # Enqueue only after the commit: the worker must find the row.
    try:
        enqueue_analysis(row.id, row.queue)
    except Exception as exc:  # noqa: BLE001 - broker down: the analysis cannot run; say so and do not leave it queued
        log.exception("enqueue of analysis %s failed", row.id)
        with state.sessions() as s, s.begin():
            s.execute(update(db.Analysis).where(db.Analysis.id == row.id).values(
                status=db.FAILED, finished_at=db.utcnow(), stage="failed",
                error={"type": "https://taskgauge.dev/problems/unavailable", "title": "Broker unavailable",
                       "status": 503, "detail": f"could not enqueue the analysis ({type(exc).__name__}); retry "
                       "when the broker is back (GET /readyz)"}))
        raise ServiceUnavailable(
            f"the task broker is unreachable ({type(exc).__name__}); the analysis was not queued. Check GET /readyz "
            "and retry", title="Broker unavailable") from None
    return row


def cancel_analysis(state: AppState, owner: Principal, analysis_id: str) -> db.Analysis:
    A = db.Analysis
    with state.sessions() as s, s.begin():
        row = get_analysis(s, owner, analysis_id)
        res = s.execute(update(A).where(A.id == row.id, A.status.in_([db.QUEUED, db.RUNNING]))
                        .values(status=db.CANCELLED, finished_at=db.utcnow(), stage="cancelled"))
        if res.rowcount != 1:
            raise Conflict(f"analysis {analysis_id} is already {row.status}; only queued or running analyses can "
                           "be cancelled", title="Analysis already finished")
    with state.sessions() as s:
        return get_analysis(s, owner, analysis_id)


# ------------------------------------------------------------------------------------------ schedules


def create_schedule(state: AppState, owner: Principal, *, dataset_id: str, cron: str, timezone: str,
                    estimators: dict[str, Any] | None, model_spec_id: str | None) -> db.Schedule:
    from app.schedules.cron import ScheduleError, check_cron, check_timezone, next_run

    try:
        cron = check_cron(cron)
        check_timezone(timezone)
    except ScheduleError as exc:
        raise InvalidInput(str(exc), title="Invalid schedule") from None
    with state.sessions() as s, s.begin():
        dataset = get_dataset(s, owner, dataset_id)
        spec = get_model_spec(s, owner, model_spec_id).spec if model_spec_id else None
        requests = check_requests(estimators, dataset, spec)
        now = db.utcnow()
        row = db.Schedule(id=db.new_id(), owner_id=owner.owner_id, dataset_id=dataset.id, model_spec_id=model_spec_id,
                          estimators=requests, cron=cron, timezone=timezone, enabled=True,
                          next_run_at=next_run(cron, timezone, now), created_at=now)
        s.add(row)
    return row
