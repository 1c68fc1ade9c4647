"""Celery beat for scheduled re-analysis (docs/dashboard.md).

Beat only sends ``taskgauge.run_due_schedules`` (:func:`workers.tasks.run_due_schedules`) every
``TASKGAUGE_SCHEDULE_SCAN_SECONDS`` (default 30 s; :func:`workers.celery_app.beat_schedule`, the one schedule);
a worker runs the scan, which creates ordinary analyses for the schedules whose ``next_run_at`` has passed. Which
schedules are due, and whether a due time has been served, lives in the database, not in beat's state — so beat
uses celery's plain in-memory scheduler (no shelve file to share or corrupt), can be restarted at will, and two
beat processes are harmless: their scans claim each due schedule under a row lock (``SELECT … FOR UPDATE``,
re-checked after the wait; SQLite serialises writers), so each due time yields exactly one analysis.
"""

from __future__ import annotations

from taskgauge.settings import Settings
from workers.celery_app import configure


def run_beat(settings: Settings, *, loglevel: str = "INFO") -> None:
    """Run Celery beat in this process until it is stopped (``taskgauge beat``)."""
    app = configure(settings)
    interval = min(settings.SCHEDULE_SCAN_SECONDS, 60.0)
    app.Beat(scheduler="celery.beat:Scheduler", loglevel=loglevel, max_interval=interval).run()
