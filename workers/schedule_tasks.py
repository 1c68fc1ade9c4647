"""Celery beat for scheduled re-analysis (DESIGN.md §2.4).

Beat only sends ``taskgauge.run_due_schedules`` (``workers.tasks.run_due_schedules``) every
``TASKGAUGE_SCHEDULE_SCAN_SECONDS`` (default 30 s); a worker runs the scan, which creates ordinary analyses for
the schedules whose ``next_run_at`` has passed. Which schedules are due, and whether a due time has been served,
lives in the database, not in beat's state — so beat uses celery's plain in-memory scheduler (no shelve file to
share or corrupt), can be restarted at will, and two beat processes are harmless: their scans claim each due
schedule under a row lock (``SELECT … FOR UPDATE``, re-checked after the wait; SQLite serialises writers), so each
due time yields exactly one analysis.

>>> sorted(beat_schedule(5.0)["taskgauge-due-schedules"])
['options', 'schedule', 'task']
"""

from __future__ import annotations

import os
from typing import Any

from workers.celery_app import TASK_SCHEDULES, WorkerConfig, celery_app, configure

SCAN_ENV = "TASKGAUGE_SCHEDULE_SCAN_SECONDS"
DEFAULT_SCAN_SECONDS = 30.0


def scan_seconds(value: float | None = None) -> float:
    if value is None:
        value = float(os.environ.get(SCAN_ENV, DEFAULT_SCAN_SECONDS))
    if not value > 0:
        raise ValueError(f"{SCAN_ENV} must be a positive number of seconds, got {value!r}")
    return float(value)


def beat_schedule(seconds: float) -> dict[str, Any]:
    # expires: a scan message older than one interval is dropped — the next scan does the same work.
    return {"taskgauge-due-schedules": {"task": TASK_SCHEDULES, "schedule": seconds,
                                       "options": {"expires": max(1.0, seconds)}}}


def run_beat(config: WorkerConfig, *, seconds: float | None = None, loglevel: str = "INFO") -> None:
    """Run Celery beat in this process until it is stopped (``taskgauge beat``)."""
    secs = scan_seconds(seconds)
    app = configure(config)
    app.conf.beat_schedule = beat_schedule(secs)
    app.conf.beat_max_loop_interval = min(secs, 60.0)
    app.Beat(scheduler="celery.beat:Scheduler", loglevel=loglevel, max_interval=min(secs, 60.0)).run()


__all__ = ["beat_schedule", "run_beat", "scan_seconds", "celery_app"]
