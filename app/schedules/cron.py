"""Cron expressions with IANA time zones (``croniter`` + ``zoneinfo``).

A schedule's cron expression is read in its own time zone, so ``0 3 * * *`` in ``Europe/Berlin`` means 03:00
Berlin time on both sides of a daylight-saving change; every instant returned here is timezone-aware UTC.
Five fields (minute hour day month weekday) or six (a trailing seconds field, croniter's convention, handy in
tests: ``* * * * * */5`` = every 5 s).

>>> from datetime import datetime, timezone
>>> next_run("0 3 * * *", "Europe/Berlin", datetime(2024, 7, 1, 12, 0, tzinfo=timezone.utc)).isoformat()
'2024-07-02T01:00:00+00:00'
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter


class ScheduleError(ValueError):
    """A bad cron expression or time zone; the message says what and how to fix it."""


def check_timezone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {tz!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'") from None


def check_cron(expr: str) -> str:
    expr = " ".join(str(expr).split())
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
        after = after.replace(tzinfo=timezone.utc)
    it = croniter(check_cron(expr), after.astimezone(zone))
    nxt = it.get_next(datetime)
    return nxt.astimezone(timezone.utc)
