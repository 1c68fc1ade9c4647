"""``/schedules``: scheduled re-analysis (cron expression in an IANA time zone). Celery beat runs the
``taskgauge.run_due_schedules`` scan, which creates ordinary analyses."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from app.deps import OwnerDep, ReadDep, StateDep, WriteSessionDep
from app.errors import responses
from app.schemas import ScheduleCreate, SchedulePublic, SchedulesPublic
from taskgauge.auth import Principal
from taskgauge.pipeline import Limits
from taskgauge.services import schedules

router = APIRouter(prefix="/schedules", tags=["schedules"])


@router.post("", status_code=201, response_model=SchedulePublic, operation_id="schedules-create", responses=responses())
def create_schedule(body: ScheduleCreate, session: WriteSessionDep, owner: OwnerDep, state: StateDep) -> SchedulePublic:
    """e.g. ``{"dataset_id": "…", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "estimators": {"mle": {}}}``."""
    row = schedules.create_schedule(
        session,
        owner.owner_id,
        dataset_id=body.dataset_id,
        cron=body.cron,
        timezone=body.timezone,
        estimators=body.estimators,
        model_spec_id=body.model_spec_id,
        min_interval_s=state.settings.MIN_SCHEDULE_INTERVAL_S,
        limits=Limits.from_settings(state.settings),
    )
    session.commit()
    return SchedulePublic.model_validate(row)


@router.get("", response_model=SchedulesPublic, operation_id="schedules-list", responses=responses())
async def list_schedules(read: ReadDep) -> SchedulesPublic:
    def listing(session: Session, owner: Principal) -> SchedulesPublic:
        rows = schedules.list_schedules(session, owner.owner_id)
        return SchedulesPublic(items=[SchedulePublic.model_validate(r) for r in rows], count=len(rows))

    return await read(listing)


@router.delete("/{schedule_id}", status_code=204, operation_id="schedules-delete", responses=responses())
def delete_schedule(schedule_id: str, session: WriteSessionDep, owner: OwnerDep) -> Response:
    schedules.delete_schedule(session, owner.owner_id, schedule_id)
    session.commit()
    return Response(status_code=204)
