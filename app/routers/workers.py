"""``/workers`` (admins only): the live Celery workers with their queues, devices and current analyses, as each
worker reports itself (``workers.presence``; works on every broker). An admin is an owner named in
``TASKGAUGE_ADMIN_OWNERS`` (with the embedded broker, also the ``local`` owner of the local key)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from app.deps import ReadDep, StateDep
from app.errors import responses
from app.schemas import WorkerPublic, WorkersPublic
from taskgauge.auth import Principal
from taskgauge.services import workers

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", response_model=WorkersPublic, operation_id="workers-list", responses=responses(403))
async def list_workers(
    read: ReadDep,
    state: StateDep,
    all: bool = Query(False, description="Also workers whose heartbeat stopped (gone)."),
) -> WorkersPublic:
    """Live workers: ``{"items": [{"name", "hostname", "queues", "device", "active": [{"analysis_id", "stage",
    …}], …}], "count"}``. 403 unless the API key's owner is an admin."""

    def listing(session: Session, owner: Principal) -> WorkersPublic:
        workers.require_admin(session, owner.owner_id, state.settings)
        rows = workers.list_workers(session, state.settings, include_gone=all)
        return WorkersPublic(items=[WorkerPublic.model_validate(r) for r in rows], count=len(rows))

    return await read(listing)
