"""Schedules and report history over the service's ORM (``workers.db``); thin routes call these.

Functions only flush; the route owns the commit (STYLE.md, Persistence). Ownership: every lookup filters by the
owner, so another owner's id is "not found" (DESIGN.md §6). The due-schedule scan itself is
``workers.tasks.run_due_schedules`` (Celery beat, see ``workers.schedule_tasks``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.schedules.cron import ScheduleError, check_cron, check_timezone, next_run
from app.schedules.history import build_history
from workers import db


class NotFound(LookupError):
    def __init__(self, what: str, ident: str):
        super().__init__(f"no {what} with id {ident} for this API key")
        self.what, self.ident = what, ident


def validate_estimators(estimators: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Names and params checked against the registry when the schedule is made, not at 3 am."""
    from estimators.base import EstimatorError
    from workers.pipeline import DEFAULT_ESTIMATORS, plan

    requests = {k: dict(v or {}) for k, v in (estimators or {}).items()} or {n: {} for n in DEFAULT_ESTIMATORS}
    try:
        plan(requests, None, model_spec={"arch": "mlp"})  # the actual model spec is checked by each analysis
    except (EstimatorError, KeyError) as exc:
        raise ScheduleError(str(exc).strip("'\"")) from None
    return requests


def _owned(session: Session, model: Any, owner_id: str, ident: str, what: str) -> Any:
    row = session.scalars(select(model).where(model.id == ident, model.owner_id == owner_id)).one_or_none()
    if row is None:
        raise NotFound(what, ident)
    return row


def create_schedule(
    session: Session, *, owner_id: str, dataset_id: str, cron: str, timezone: str = "UTC",
    estimators: Mapping[str, Any] | None = None, model_spec_id: str | None = None, now: datetime | None = None,
) -> db.Schedule:
    _owned(session, db.Dataset, owner_id, dataset_id, "dataset")
    if model_spec_id is not None:
        _owned(session, db.ModelSpec, owner_id, model_spec_id, "model spec")
    expr = check_cron(cron)
    check_timezone(timezone)
    requests = validate_estimators(estimators)
    now = now or db.utcnow()
    sched = db.Schedule(
        id=db.new_id(), owner_id=owner_id, dataset_id=dataset_id, model_spec_id=model_spec_id,
        estimators=requests, cron=expr, timezone=timezone, enabled=True,
        next_run_at=next_run(expr, timezone, now), created_at=now,
    )
    session.add(sched)
    session.flush()
    return sched


def list_schedules(session: Session, owner_id: str, dataset_id: str | None = None) -> list[db.Schedule]:
    q = select(db.Schedule).where(db.Schedule.owner_id == owner_id)
    if dataset_id is not None:
        q = q.where(db.Schedule.dataset_id == dataset_id)
    return list(session.scalars(q.order_by(db.Schedule.created_at, db.Schedule.id)))


def delete_schedule(session: Session, owner_id: str, schedule_id: str) -> None:
    session.delete(_owned(session, db.Schedule, owner_id, schedule_id, "schedule"))
    session.flush()


def schedule_public(s: db.Schedule) -> dict[str, Any]:
    return {
        "id": s.id, "dataset_id": s.dataset_id, "model_spec_id": s.model_spec_id, "estimators": s.estimators,
        "cron": s.cron, "timezone": s.timezone, "enabled": s.enabled,
        "next_run_at": s.next_run_at.isoformat() if s.next_run_at else None,
        "last_run_at": s.last_run_at.isoformat() if s.last_run_at else None,
        "created_at": s.created_at.isoformat() if s.created_at else None,
    }


def dataset_history(session: Session, owner_id: str, dataset_id: str) -> list[dict[str, Any]]:
    """The dataset's reports, newest first, each with headline values and version-change / drift flags."""
    _owned(session, db.Dataset, owner_id, dataset_id, "dataset")
    rows = session.execute(
        select(db.Report.id, db.Report.analysis_id, db.Report.created_at, db.Report.document,
               db.Analysis.schedule_id)
        .join(db.Analysis, db.Analysis.id == db.Report.analysis_id)
        .where(db.Report.dataset_id == dataset_id, db.Report.owner_id == owner_id)
    ).all()
    return build_history(
        {"report_id": rid, "analysis_id": aid, "created_at": (doc or {}).get("created_at") or created.isoformat(),
         "results": (doc or {}).get("results") or {}, "schedule_id": sid}
        for rid, aid, created, doc, sid in rows
    )


def sample_png(session: Session, owner_id: str, dataset_id: str, index: int, blob_dir: Any, *,
               size: int = 96) -> bytes:
    """One sample of an image dataset as a PNG (for the K_F pair thumbnails).

    Values are min–max scaled per sample to 0..255 (images are stored as given, often in [0, 1]); 1 or 3 channels
    become L or RGB; small images are upscaled with nearest-neighbour to ``size`` pixels on the longer side.
    """
    import io

    import numpy as np
    from PIL import Image

    from workers.blobstore import BlobStore
    from workers.canonical import CanonicalDataset

    ds = _owned(session, db.Dataset, owner_id, dataset_id, "dataset")
    shape = list(ds.shape or [])
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise ScheduleError(f"dataset {dataset_id} is not an image dataset (shape {shape}); no thumbnails")
    if not 0 <= index < shape[0]:
        raise NotFound("sample", str(index))
    data = CanonicalDataset.from_bytes(BlobStore(blob_dir).read(ds.blob_sha256))
    x = np.asarray(data.X[index], dtype=np.float64)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    x = np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)
    img = (np.nan_to_num(x) * 255).round().astype(np.uint8)
    pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(np.transpose(img, (1, 2, 0)), "RGB")
    scale = max(1, size // max(pil.size))
    if scale > 1:
        pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, "PNG")
    return buf.getvalue()
