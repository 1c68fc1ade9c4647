"""Report history with flags, and sample thumbnails.

``GET /datasets/{id}/reports`` (history, newest first, with version-change and drift flags) and
``GET /datasets/{id}/samples/{index}.png`` (an image sample, for the dashboard's K_F pair thumbnails).
Included before the datasets router so that this history answers ``/datasets/{id}/reports``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from app.deps import ReadDep, StateDep
from app.errors import responses
from taskgauge.errors import InvalidInput
from taskgauge.services import datasets, reports

router = APIRouter(tags=["datasets"])


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


@router.get(
    "/datasets/{dataset_id}/reports",
    response_model=HistoryPublic,
    operation_id="datasets-history",
    tags=["datasets"],
    responses=responses(),
)
async def dataset_reports(dataset_id: str, read: ReadDep) -> dict[str, Any]:
    """The dataset's report history, newest first: headline values, trigger, and flags relative to the previous
    report — ``version_change`` (an estimator was upgraded) and ``drift`` (a value moved beyond its CI)."""
    items = await read(lambda s, owner: reports.dataset_history(s, owner.owner_id, dataset_id))
    return {"items": items, "count": len(items)}


@router.get(
    "/datasets/{dataset_id}/samples/{index}.png",
    operation_id="datasets-sample-png",
    tags=["datasets"],
    response_class=Response,
    responses={**responses(), 200: {"content": {"image/png": {}}}},
)
async def dataset_sample_png(dataset_id: str, index: int, read: ReadDep, state: StateDep) -> Response:
    """One sample of an image dataset as a PNG (min–max scaled, nearest-neighbour upscaled)."""
    png = await read(lambda s, owner: datasets.sample_png(s, state.blobs, owner.owner_id, dataset_id, index))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


class TextItem(BaseModel):
    index: int
    text: str
    truncated: bool = Field(description="the text was cut at 2000 characters")


class TextsPublic(BaseModel):
    items: list[TextItem]


@router.get(
    "/datasets/{dataset_id}/texts",
    response_model=TextsPublic,
    operation_id="datasets-texts",
    tags=["datasets"],
    responses=responses(),
)
async def dataset_texts(dataset_id: str, read: ReadDep, state: StateDep, indices: str = "0,1,2,3,4") -> dict[str, Any]:
    """Some texts of a text dataset by index (comma-separated, at most 50), e.g. the two sides of a K_F pair."""
    try:
        wanted = [int(i) for i in indices.split(",") if i.strip()]
    except ValueError:
        raise InvalidInput("indices must be comma-separated whole numbers, e.g. ?indices=0,1,2") from None
    return {
        "items": await read(lambda s, owner: datasets.read_texts(s, state.blobs, owner.owner_id, dataset_id, wanted))
    }
