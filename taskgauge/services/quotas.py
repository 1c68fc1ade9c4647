"""Per-owner quotas (issue 15): queued + running analyses and stored dataset bytes. Over a quota the API answers
429 problem+json with ``Retry-After`` (:class:`taskgauge.errors.TooManyRequests`).

* ``TASKGAUGE_MAX_ACTIVE_ANALYSES_PER_OWNER`` (default 20): checked when an analysis is created, inside its
  transaction after the owner's row is locked (PostgreSQL; SQLite serialises writers anyway), so concurrent
  creations cannot overshoot. Scheduled analyses are not refused (a schedule's due time is served once), but they
  count towards the quota of the owner's next API request.
* ``TASKGAUGE_MAX_STORAGE_MB_PER_OWNER`` (default 20 GiB): the sum of the owner's uploaded file sizes (datasets
  and model weights) plus the incoming upload; checked before an upload is parsed and again in the transaction that stores it.

0 disables either quota.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from taskgauge import db
from taskgauge.errors import TooManyRequests
from taskgauge.settings import Settings


def active_analyses(session: Session, owner_id: str) -> int:
    A = db.Analysis
    q = select(func.count()).select_from(A).where(A.owner_id == owner_id, A.status.in_([db.QUEUED, db.RUNNING]))
    return int(session.scalar(q) or 0)


def check_active_analyses(session: Session, owner_id: str, settings: Settings, adding: int = 1) -> None:
    limit = settings.MAX_ACTIVE_ANALYSES_PER_OWNER
    if not limit:
        return
    session.execute(select(db.Owner.id).where(db.Owner.id == owner_id).with_for_update())
    active = active_analyses(session, owner_id)
    if active + adding > limit:
        raise TooManyRequests(
            f"you have {active} queued or running analyses, the most one key's owner may have at once is {limit} "
            "(TASKGAUGE_MAX_ACTIVE_ANALYSES_PER_OWNER); wait for some to finish (GET /api/v1/analyses?status=queued) "
            "or cancel some, then retry",
            title="Too many active analyses",
            retry_after=30,
            active=active,
            limit=limit,
        )


def stored_bytes(session: Session, owner_id: str) -> int:
    """The sizes of the owner's uploaded dataset files and model weights."""
    D, M = db.Dataset, db.ModelSpec
    datasets = session.scalar(select(func.coalesce(func.sum(D.size_bytes), 0)).where(D.owner_id == owner_id))
    weights = session.scalar(select(func.coalesce(func.sum(M.weights_size_bytes), 0)).where(M.owner_id == owner_id))
    return int(datasets or 0) + int(weights or 0)


def check_storage(session: Session, owner_id: str, settings: Settings, incoming: int) -> None:
    limit_mb = settings.MAX_STORAGE_MB_PER_OWNER
    if not limit_mb:
        return
    used = stored_bytes(session, owner_id)
    if used + int(incoming) > limit_mb * 1024 * 1024:
        raise TooManyRequests(
            f"your datasets and model weights take {used / 2**20:.1f} MB and this upload {int(incoming) / 2**20:.1f} MB, over the "
            f"{limit_mb} MB one key's owner may store (TASKGAUGE_MAX_STORAGE_MB_PER_OWNER); delete datasets you no "
            "longer need (DELETE /api/v1/datasets/{id}, DELETE /api/v1/model-specs/{id}) and retry",
            title="Storage quota exceeded",
            retry_after=60,
            used_bytes=used,
            limit_bytes=limit_mb * 1024 * 1024,
        )
