"""``/reports/{id}`` (the docs/methods.md §0 document) and ``/compare`` (headline values side by side)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from app.deps import ReadDep
from app.errors import responses
from app.schemas import CompareColumn, ComparePublic, CompareRow
from taskgauge.db import Report
from taskgauge.services import reports as service

router = APIRouter(tags=["reports"])


@router.get("/reports/{report_id}", operation_id="reports-read", responses=responses(), response_model=dict[str, Any])
async def read_report(report_id: str, read: ReadDep) -> JSONResponse:
    """The report JSON (docs/methods.md §0) — the same document the CLI's local mode writes with ``--json``."""
    # rendered in the worker thread: a large document is never walked on the event loop
    return await read(lambda s, owner: JSONResponse(service.get_report(s, owner.owner_id, report_id).document))


@router.get("/compare", response_model=ComparePublic, operation_id="reports-compare", responses=responses())
async def compare(
    read: ReadDep,
    report_ids: Annotated[str, Query(description="comma-separated report ids", examples=["a1…,b2…"])],
) -> ComparePublic:
    """Headline value of every estimator, one column per report."""
    ids = [i.strip() for i in report_ids.split(",") if i.strip()]
    return await read(lambda s, owner: _compare(service.get_reports(s, owner.owner_id, ids)))


def _compare(reports: list[Report]) -> ComparePublic:
    names: list[str] = []
    for r in reports:
        names += [n for n in (r.document.get("results") or {}) if n not in names]
    rows = []
    for n in names:
        entries = [(r.document.get("results") or {}).get(n) or {} for r in reports]
        rows.append(
            CompareRow(
                estimator=n, values=[e.get("value") for e in entries], versions=[e.get("version") for e in entries]
            )
        )
    cols = [
        CompareColumn(
            report_id=r.id,
            dataset_id=r.dataset_id,
            dataset_name=(r.document.get("dataset") or {}).get("name"),
            created_at=r.created_at,
        )
        for r in reports
    ]
    return ComparePublic(reports=cols, rows=rows)
