"""Schedules: scheduled re-analysis of a dataset (a cron expression read in an IANA time zone).

A schedule's cron expression is read in its own time zone, so ``0 3 * * *`` in ``Europe/Berlin`` means 03:00
Berlin time on both sides of a daylight-saving change; every instant here is timezone-aware UTC. Five fields
(minute hour day month weekday) or six (a trailing seconds field, croniter's convention, handy in tests:
``* * * * * */5`` = every 5 s).

Celery beat (``workers.beat``) only triggers :func:`run_due`, which turns every due schedule into an ordinary
analysis through :func:`taskgauge.services.analyses.new_analysis` (the same constructor the API uses) and
advances ``next_run_at`` under a row lock, so two beats yield one analysis per due time.

>>> from datetime import datetime, timezone
>>> next_run("0 3 * * *", "Europe/Berlin", datetime(2024, 7, 1, 12, 0, tzinfo=timezone.utc)).isoformat()
'2024-07-02T01:00:00+00:00'
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter
from sqlalchemy import select
from sqlalchemy.orm import Session

from estimators.base import EstimatorError
from taskgauge import db
from taskgauge.context import Context
from taskgauge.errors import InvalidInput, NotFound
from taskgauge.services import get_owned
from taskgauge.services.analyses import check_requests, enqueue, new_analysis

__all__ = [
    "NotFound",
    "ScheduleError",
    "check_cron",
    "check_timezone",
    "create_schedule",
    "delete_schedule",
    "list_schedules",
    "next_run",
    "run_due",
]


class ScheduleError(InvalidInput):
    """A bad cron expression, time zone or estimator request; the message says what and how to fix it."""

    title = "Invalid schedule"


def check_timezone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {str(tz)[:80]!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


MAX_CRON_CHARS = 100  # the column's width; both backends refuse longer expressions the same way


def check_cron(expr: str) -> str:
    expr = " ".join(str(expr).split())
    if len(expr) > MAX_CRON_CHARS or "\x00" in expr:
        raise ScheduleError(
            f"cron expression too long ({len(expr)} characters, at most {MAX_CRON_CHARS}) or with a "
            "NUL character; write 5 fields 'minute hour day month weekday' such as '0 3 * * *'"
        )
    if len(expr.split()) not in (5, 6) or not croniter.is_valid(expr):
        raise ScheduleError(
            f"invalid cron expression {expr!r}; write 5 fields 'minute hour day month weekday' "
            "(e.g. '0 3 * * *' for 03:00 daily) or add a 6th seconds field"
        )
    return expr


def next_run(expr: str, tz: str, after: datetime) -> datetime:
    """The first due time strictly after ``after`` (aware), as aware UTC."""
    zone = check_timezone(tz)
    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    try:
        nxt = croniter(check_cron(expr), after.astimezone(zone)).get_next(datetime)
    except (CroniterBadDateError, CroniterBadCronError):
        raise ScheduleError(
            f"cron expression {expr!r} never fires (no such date, e.g. 30 February); "
            "pick a day that exists in the month, e.g. '0 0 28 2 *'"
        ) from None
    return nxt.astimezone(UTC)


def check_interval(expr: str, tz: str, after: datetime, min_seconds: float, occurrences: int = 25) -> None:
    """Refuse a schedule that would fire more often than every ``min_seconds`` (the smallest gap among its next
    ``occurrences`` due times; also catches '0,1 3 * * *')."""
    if min_seconds <= 0:
        return
    zone = check_timezone(tz)
    it = croniter(check_cron(expr), after.astimezone(zone))
    try:
        times = [it.get_next(datetime) for _ in range(occurrences)]
    except (CroniterBadDateError, CroniterBadCronError):
        next_run(expr, tz, after)  # raises the "never fires" error
        return
    gap = min((b - a).total_seconds() for a, b in zip(times, times[1:]))
    if gap < min_seconds:
        raise ScheduleError(
            f"cron expression {expr!r} fires every {gap:g} s at times; schedules may fire at most once every "
            f"{min_seconds:g} s (TASKGAUGE_MIN_SCHEDULE_INTERVAL_S), e.g. '*/5 * * * *' for every 5 minutes"
        )


def create_schedule(
    session: Session,
    owner_id: str,
    *,
    dataset_id: str,
    cron: str,
    timezone: str = "UTC",
    estimators: Mapping[str, Any] | None = None,
    model_spec_id: str | None = None,
    now: datetime | None = None,
    min_interval_s: float | None = None,
    limits: Any = None,
) -> db.Schedule:
    """Validate (cron, time zone, and the estimators against the dataset and model spec, as an analysis would be
    validated: now, not at 3 am) and add the schedule. Flushes only; the caller commits."""
    expr = check_cron(cron)
    check_timezone(timezone)
    if min_interval_s is None or limits is None:
        from taskgauge.pipeline import Limits
        from taskgauge.settings import get_settings

        min_interval_s = get_settings().MIN_SCHEDULE_INTERVAL_S if min_interval_s is None else min_interval_s
        limits = Limits.from_settings() if limits is None else limits
    check_interval(expr, timezone, now or db.utcnow(), min_interval_s)
    dataset = get_owned(session, db.Dataset, owner_id, dataset_id)
    spec = get_owned(session, db.ModelSpec, owner_id, model_spec_id) if model_spec_id else None
    try:
        requests = check_requests(dict(estimators or {}), dataset, spec, limits)
    except EstimatorError as exc:
        raise ScheduleError(str(exc)) from None
    now = now or db.utcnow()
    sched = db.Schedule(
        id=db.new_id(),
        owner_id=owner_id,
        dataset_id=dataset_id,
        model_spec_id=model_spec_id,
        estimators=requests,
        cron=expr,
        timezone=timezone,
        enabled=True,
        next_run_at=next_run(expr, timezone, now),
        created_at=now,
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
    session.delete(get_owned(session, db.Schedule, owner_id, schedule_id))
    session.flush()


def run_due(ctx: Context, now: datetime | None = None) -> list[str]:
    """Create an ordinary analysis for every due schedule and advance its ``next_run_at`` (Celery beat)."""
    S = db.Schedule
    now = now or db.utcnow()
    created: list[db.Analysis] = []
    with ctx.sessions() as s, s.begin():
        due = s.scalars(select(S).where(S.enabled.is_(True)).where(S.next_run_at <= now).with_for_update()).all()
        for sched in due:
            row = new_analysis(
                owner_id=sched.owner_id,
                dataset_id=sched.dataset_id,
                requests=sched.estimators,
                model_spec_id=sched.model_spec_id,
                schedule_id=sched.id,
            )
            s.add(row)
            sched.last_run_at = now
            sched.next_run_at = next_run(sched.cron, sched.timezone, now)
            created.append(row)
    enqueue(ctx, created)
    return [row.id for row in created]
