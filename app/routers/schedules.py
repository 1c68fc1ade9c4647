"""``/schedules``: scheduled re-analysis (cron expression in an IANA time zone). Celery beat runs the
``taskgauge.run_due_schedules`` scan, which creates ordinary analyses."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import delete, select

from app import services
from app.deps import OwnerDep, SessionDep, StateDep
from app.errors import not_found, responses
from app.schemas import ScheduleCreate, SchedulePublic, SchedulesPublic
from workers import db

router = APIRouter(prefix="/schedules", tags=["schedules"])


@router.post("", status_code=201, response_model=SchedulePublic, operation_id="schedules-create",
             responses=responses())
def create_schedule(body: ScheduleCreate, state: StateDep, owner: OwnerDep) -> SchedulePublic:
    """e.g. ``{"dataset_id": "…", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "estimators": {"mle": {}}}``."""
    row = services.create_schedule(state, owner, dataset_id=body.dataset_id, cron=body.cron, timezone=body.timezone,
                                   estimators=body.estimators, model_spec_id=body.model_spec_id)
    return SchedulePublic.model_validate(row)


@router.get("", response_model=SchedulesPublic, operation_id="schedules-list", responses=responses())
def list_schedules(session: SessionDep, owner: OwnerDep) -> SchedulesPublic:
    rows = session.scalars(select(db.Schedule).where(db.Schedule.owner_id == owner.owner_id)
                           .order_by(db.Schedule.created_at)).all()
    return SchedulesPublic(items=[SchedulePublic.model_validate(r) for r in rows], count=len(rows))


@router.delete("/{schedule_id}", status_code=204, operation_id="schedules-delete", responses=responses())
def delete_schedule(schedule_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    res = session.execute(delete(db.Schedule).where(db.Schedule.id == schedule_id,
                                                    db.Schedule.owner_id == owner.owner_id))
    session.commit()
    if res.rowcount != 1:
        raise not_found("schedule", schedule_id, "list yours with GET /api/v1/schedules")
    return Response(status_code=204)
