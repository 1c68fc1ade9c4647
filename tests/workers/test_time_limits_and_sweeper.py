"""The hard time limit's handler (worker main process) fails the analysis; the API process runs the stale sweeper.

Both without Celery: the handler is called as Celery's ``task_failure`` signal calls it after killing the child."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from seeding import seed_analysis

from taskgauge import db
from taskgauge.context import Context
from taskgauge.migrate import upgrade
from taskgauge.settings import Settings


@pytest.fixture
def world(tmp_path):
    settings = Settings(DATA_DIR=tmp_path, LEASE_S=1, TASK_SOFT_TIME_LIMIT_S=7)
    upgrade(settings.DATABASE_URL)
    sent: list[tuple[str, str]] = []
    ctx = Context.build(settings, lambda aid, q: sent.append((aid, q)))
    with ctx.sessions() as s, s.begin():
        aid = seed_analysis(
            s, status=db.RUNNING, attempts=1, lease_token="t", heartbeat_at=db.utcnow() - timedelta(seconds=30)
        )
    yield settings, ctx, aid, sent
    ctx.engine.dispose()


def test_hard_time_limit_handler_fails_the_analysis(world):
    from workers import tasks
    from workers.celery_app import configure

    settings, ctx, aid, _ = world
    configure(settings)
    tasks._contexts.clear()
    try:
        # another task's failure, or another exception, changes nothing
        tasks._hard_time_limit(sender=tasks.run_due_schedules, exception=TimeLimitExceeded(5), args=[aid])
        tasks._hard_time_limit(sender=tasks.run_analysis, exception=WorkerLostError("lost"), args=[aid])
        with ctx.sessions() as s:
            assert s.get(db.Analysis, aid).status == db.RUNNING
        tasks._hard_time_limit(sender=tasks.run_analysis, exception=TimeLimitExceeded(5), args=[aid])
        with ctx.sessions() as s:
            row = s.get(db.Analysis, aid)
        assert row.status == db.FAILED and row.lease_token is None and row.finished_at is not None
        assert row.error["type"].endswith("/time-limit") and row.error["limit_s"] == 7
        assert "TASKGAUGE_TASK_SOFT_TIME_LIMIT_S" in row.error["detail"]
    finally:
        for c in tasks._contexts.values():
            c.engine.dispose()
        tasks._contexts.clear()


def test_the_api_process_sweeps_stale_analyses(world):
    from app.main import start_sweeper

    _, ctx, aid, sent = world
    stop = start_sweeper(ctx)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not sent:
            time.sleep(0.1)
    finally:
        stop.set()
    assert sent == [(aid, "default")]
    with ctx.sessions() as s:
        row = s.get(db.Analysis, aid)
    assert row.status == db.QUEUED and row.lease_token is None


def test_configure_sets_the_celery_limits(tmp_path):
    from workers.celery_app import celery_app, configure

    configure(
        Settings(
            DATA_DIR=tmp_path,
            TASK_SOFT_TIME_LIMIT_S=100,
            TASK_HARD_TIME_LIMIT_S=110,
            WORKER_MAX_MEMORY_PER_CHILD_MB=512,
        )
    )
    conf = celery_app.conf
    assert conf.task_soft_time_limit == 100
    assert conf.task_time_limit == 160  # at least a minute past the soft limit, so the soft one can act first
    assert conf.worker_max_memory_per_child == 512 * 1024  # Celery counts KiB
    configure(Settings(DATA_DIR=tmp_path, WORKER_MAX_MEMORY_PER_CHILD_MB=0))
    assert celery_app.conf.worker_max_memory_per_child is None


def test_soft_time_limit_is_recognised_when_a_library_rewraps_it():
    from celery.exceptions import SoftTimeLimitExceeded

    from workers.tasks import _soft_time_limit

    def rewrapped() -> BaseException:
        try:
            try:
                raise SoftTimeLimitExceeded()
            except SoftTimeLimitExceeded as inner:
                raise RuntimeError("query interrupted") from inner
        except RuntimeError as outer:
            return outer

    assert _soft_time_limit(rewrapped(), elapsed=1.0, limit=100.0)  # named in the chain
    assert _soft_time_limit(OSError("interrupted"), elapsed=100.0, limit=100.0)  # at the limit
    assert not _soft_time_limit(ValueError("a real bug"), elapsed=5.0, limit=100.0)
