"""Report history with flags, and sample thumbnails (DESIGN.md §6).

``GET /datasets/{id}/reports`` (history, newest first, with version-change and drift flags) and
``GET /datasets/{id}/samples/{index}.png`` (an image sample, for the dashboard's K_F pair thumbnails).
The schedule CRUD routes are ``app/routers/schedules.py`` (service helper); the app factory includes this router
before its own so that this history (with flags) answers ``/datasets/{id}/reports``.
Thin: authorise → call :mod:`app.schedules.service` → map its errors to the problem+json hierarchy.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from app.deps import OwnerDep, SessionDep, StateDep
from app.errors import InvalidInput, not_found, responses
from app.schedules import service
from app.schedules.cron import ScheduleError

router = APIRouter(prefix="/api/v1", tags=["datasets"])


class HistoryFlags(BaseModel):
    version_change: list[str] = Field(description="estimators whose version differs from the previous report")
    drift: list[str] = Field(description="estimators whose value moved outside the previous or new CI")


class HistoryItem(BaseModel):
    report_id: str
    analysis_id: str | None
    created_at: str
    schedule_id: str | None
    trigger: str = Field(description="manual | schedule")
    values: dict[str, dict[str, Any]]
    flags: HistoryFlags


class HistoryPublic(BaseModel):
    items: list[HistoryItem]
    count: int


def _not_found(exc: service.NotFound):
    hints = {"dataset": "list yours with GET /api/v1/datasets", "schedule": "list yours with GET /api/v1/schedules",
             "model spec": "list yours with GET /api/v1/model-specs", "sample": "indices run from 0 to n_samples-1"}
    return not_found(exc.what, exc.ident, hints.get(exc.what, ""))


@router.get("/datasets/{dataset_id}/reports", response_model=HistoryPublic, operation_id="datasets-history",
            tags=["datasets"], responses=responses())
def dataset_reports(dataset_id: str, owner: OwnerDep, session: SessionDep) -> dict[str, Any]:
    """The dataset's report history, newest first: headline values, trigger, and flags relative to the previous
    report — ``version_change`` (an estimator was upgraded) and ``drift`` (a value moved beyond its CI)."""
    try:
        items = service.dataset_history(session, owner.owner_id, dataset_id)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    return {"items": items, "count": len(items)}


@router.get("/datasets/{dataset_id}/samples/{index}.png", operation_id="datasets-sample-png", tags=["datasets"],
            response_class=Response, responses={**responses(), 200: {"content": {"image/png": {}}}})
def dataset_sample_png(dataset_id: str, index: int, owner: OwnerDep, session: SessionDep,
                       state: StateDep) -> Response:
    """One sample of an image dataset as a PNG (min–max scaled, nearest-neighbour upscaled)."""
    try:
        png = service.sample_png(session, owner.owner_id, dataset_id, index, state.blobs.root)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    except ScheduleError as exc:
        raise InvalidInput(str(exc)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
