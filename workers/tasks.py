"""Celery tasks: ``run_analysis(analysis_id)``, the stale-analysis sweeper and the due-schedule scan.

The task does bookkeeping only; the analysis itself is :func:`workers.pipeline.run_pipeline`, the function the
CLI's local mode calls. :func:`execute_analysis` is the plain function behind the task (testable without Celery).

Idempotency and recovery (DESIGN.md §2). A delivery *claims* the analysis with one conditional UPDATE::

    status='queued'  OR  (status='running' AND heartbeat_at < now - lease_s)   →  running, new lease_token

so only one delivery runs it at a time; a delivery that finds it finished, cancelled, gone or held by a live
worker returns at once (its message is acked). While it runs, a heartbeat thread refreshes ``heartbeat_at``
every ``heartbeat_s`` and notices cancellation. Results are written one row per estimator as they finish
(unique on ``analysis_id, estimator``; insert-or-ignore), and a re-run passes the stored ones to
``run_pipeline(done=…)`` so they are neither recomputed nor duplicated. The report is written once (unique on
``analysis_id``) in the same transaction that marks the analysis succeeded.

A worker killed mid-run: with Redis, ``acks_late`` leaves the message unacked and Redis redelivers it after the
visibility timeout; with any transport (the embedded filesystem one cannot redeliver), every worker runs a
sweeper thread that re-queues analyses left ``running`` with a heartbeat older than ``lease_s``. Either way the
claim above makes the extra delivery harmless.

A failing estimator marks the analysis ``failed`` with an RFC 9457 problem document; the exception does not
escape the task, so the worker lives on.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import signals
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from estimators.base import EstimatorError
from workers import db
from workers.blobstore import BlobStore
from workers.canonical import CanonicalDataset
from workers.celery_app import (
    TASK_RUN_ANALYSIS,
    TASK_SCHEDULES,
    TASK_SWEEP,
    WorkerConfig,
    celery_app,
    enqueue_analysis,
    get_config,
    load_extra_estimator_modules,
)

log = logging.getLogger("taskgauge.worker")

PROBLEM_BASE = "https://taskgauge.dev/problems/"


class Cancelled(Exception):
    """Raised from the progress callback when the analysis was cancelled (or its lease was lost)."""


# --------------------------------------------------------------------------------- per-process database

_engine_state: dict[str, Any] = {}


def session_factory(config: WorkerConfig | None = None) -> sessionmaker:
    """The process's session factory (rebuilt after a fork: engines must not cross process boundaries)."""
    import os

    config = config or get_config()
    key = (os.getpid(), config.database_url)
    if _engine_state.get("key") != key:
        engine = db.make_engine(config.database_url, pool_size=2, max_overflow=2) if not config.database_url.startswith(
            "sqlite"
        ) else db.make_engine(config.database_url)
        _engine_state.update(key=key, engine=engine, factory=db.make_session_factory(engine))
    return _engine_state["factory"]


# ------------------------------------------------------------------------------------------------ task


@celery_app.task(name=TASK_RUN_ANALYSIS, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_analysis(analysis_id: str) -> str:
    """Run one analysis by id (idempotent; see the module doc). Returns what happened, for the logs."""
    t0 = time.perf_counter()
    outcome = execute_analysis(analysis_id, config=get_config())
    log.info("run_analysis %s: %s in %.2fs", analysis_id, outcome, time.perf_counter() - t0)
    return outcome


def problem(title: str, detail: str, status: int, kind: str) -> dict[str, Any]:
    return {"type": PROBLEM_BASE + kind, "title": title, "status": status, "detail": detail}


def _claim(factory: sessionmaker, analysis_id: str, config: WorkerConfig) -> str | None:
    """Take the analysis' lease; returns the token, or None when another delivery must not run it."""
    token = str(uuid.uuid4())
    now = db.utcnow()
    stale = now - timedelta(seconds=config.lease_s)
    A = db.Analysis
    with factory() as s, s.begin():
        res = s.execute(
            update(A)
            .where(A.id == analysis_id)
            .where(or_(A.status == db.QUEUED, (A.status == db.RUNNING) & (A.heartbeat_at < stale)))
            .values(
                status=db.RUNNING,
                lease_token=token,
                heartbeat_at=now,
                attempts=A.attempts + 1,
                started_at=now,
                stage="starting",
                updated_at=now,
            )
        )
        return token if res.rowcount == 1 else None


class _Lease:
    """Heartbeat thread + throttled progress writer for one claimed analysis."""

    def __init__(self, factory: sessionmaker, analysis_id: str, token: str, config: WorkerConfig) -> None:
        self.factory, self.analysis_id, self.token, self.config = factory, analysis_id, token, config
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{analysis_id[:8]}", daemon=True)

    def __enter__(self) -> "_Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _mine(self):
        A = db.Analysis
        return update(A).where(A.id == self.analysis_id).where(A.lease_token == self.token).where(
            A.status == db.RUNNING
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                with self.factory() as s, s.begin():
                    res = s.execute(self._mine().values(heartbeat_at=db.utcnow()))
                if res.rowcount != 1:  # cancelled, or the lease was taken over
                    self.cancelled.set()
            except Exception:  # noqa: BLE001 - a missed heartbeat is not fatal; the next one may succeed
                log.warning("heartbeat for %s failed", self.analysis_id, exc_info=True)

    def progress(self, fraction: float, stage: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        now = time.monotonic()
        top_stage = stage.split(":", 1)[0]
        if now - self._last_write < self.config.progress_interval_s and top_stage == self._last_stage:
            return
        self._last_write, self._last_stage = now, top_stage
        with self.factory() as s, s.begin():
            res = s.execute(
                self._mine().values(progress=min(max(float(fraction), 0.0), 0.999), stage=stage[:500])
            )
        if res.rowcount != 1:
            self.cancelled.set()
            raise Cancelled()


def execute_analysis(analysis_id: str, *, config: WorkerConfig) -> str:
    """Claim, run and persist one analysis. Never raises for a bad analysis; returns the outcome."""
    from workers.pipeline import DatasetInfo, run_pipeline

    factory = session_factory(config)
    token = _claim(factory, analysis_id, config)
    if token is None:
        with factory() as s:
            row = s.get(db.Analysis, analysis_id)
        return "missing" if row is None else f"skipped ({row.status})"

    lease = _Lease(factory, analysis_id, token, config)
    try:
        with lease:
            with factory() as s:
                analysis = s.get(db.Analysis, analysis_id)
                dataset = s.get(db.Dataset, analysis.dataset_id) if analysis else None
                spec_row = s.get(db.ModelSpec, analysis.model_spec_id) if analysis and analysis.model_spec_id else None
                done = {
                    r.estimator: r.entry
                    for r in s.scalars(select(db.AnalysisResult).where(db.AnalysisResult.analysis_id == analysis_id))
                }
            if analysis is None or dataset is None:
                return "missing"
            data = CanonicalDataset.from_bytes(BlobStore(config.blob_dir).read(dataset.blob_sha256))

            def on_result(name: str, entry: dict[str, Any]) -> None:
                with factory() as s2, s2.begin():
                    s2.execute(
                        db.insert_ignore(
                            db.AnalysisResult.__table__,
                            s2.get_bind().dialect.name,
                            {
                                "id": db.new_id(),
                                "analysis_id": analysis_id,
                                "estimator": name,
                                "version": str(entry.get("version", "")),
                                "entry": entry,
                                "created_at": db.utcnow(),
                            },
                            ["analysis_id", "estimator"],
                        )
                    )

            report = run_pipeline(
                data,
                analysis.estimators or None,
                info=DatasetInfo(name=dataset.name, id=dataset.id, sha256=dataset.sha256),
                device=config.device if analysis.device == "auto" else analysis.device,
                model_spec=spec_row.spec if spec_row else None,
                memory_budget_mb=config.memory_budget_mb,
                analysis_id=analysis_id,
                progress=lease.progress,
                on_result=on_result,
                done=done,
            )
            return _finish(factory, analysis, token, report)
    except Cancelled:
        _end(factory, analysis_id, token, None, cancelled=True)
        return "cancelled"
    except EstimatorError as exc:
        _end(factory, analysis_id, token, problem("Estimator rejected the input", str(exc), 422, "estimator-input"))
        return "failed (estimator input)"
    except Exception as exc:  # noqa: BLE001 - any estimator bug fails this analysis, never the worker
        log.exception("analysis %s failed", analysis_id)
        detail = f"{type(exc).__name__}: {exc}".strip()
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
        _end(
            factory,
            analysis_id,
            token,
            problem(
                "Analysis failed",
                f"{detail}{where}. This is a bug or an unsupported input; re-run with fewer estimators to find "
                "the one that fails, and report it with the dataset shape.",
                500,
                "analysis-failed",
            ),
        )
        return "failed"


def _finish(factory: sessionmaker, analysis: db.Analysis, token: str, report: dict[str, Any]) -> str:
    A = db.Analysis
    now = db.utcnow()
    with factory() as s, s.begin():
        current = s.execute(
            select(A.status, A.lease_token).where(A.id == analysis.id).with_for_update()
        ).one_or_none()
        if current is None:
            return "missing"
        if current.status != db.RUNNING or current.lease_token != token:
            return f"lost lease ({current.status})"
        existing = s.scalar(select(db.Report.id).where(db.Report.analysis_id == analysis.id))
        report_id = existing
        if existing is None:
            report_id = report["report_id"]
            s.add(
                db.Report(
                    id=report_id,
                    owner_id=analysis.owner_id,
                    analysis_id=analysis.id,
                    dataset_id=analysis.dataset_id,
                    document=report,
                    created_at=now,
                )
            )
        s.execute(
            update(A)
            .where(A.id == analysis.id)
            .values(status=db.SUCCEEDED, progress=1.0, stage="done", report_id=report_id, finished_at=now,
                    lease_token=None, error=None)
        )
    return "succeeded"


def _end(factory: sessionmaker, analysis_id: str, token: str, error: dict[str, Any] | None, *, cancelled: bool = False) -> None:
    A = db.Analysis
    now = db.utcnow()
    with factory() as s, s.begin():
        if cancelled:  # the API already wrote 'cancelled'; just close the row if it is still ours
            s.execute(
                update(A).where(A.id == analysis_id).where(A.status == db.RUNNING).where(A.lease_token == token)
                .values(status=db.CANCELLED, finished_at=now, lease_token=None)
            )
            s.execute(update(A).where(A.id == analysis_id).where(A.status == db.CANCELLED).values(lease_token=None))
            return
        s.execute(
            update(A).where(A.id == analysis_id).where(A.status == db.RUNNING).where(A.lease_token == token)
            .values(status=db.FAILED, error=error, finished_at=now, lease_token=None, stage="failed")
        )


# ------------------------------------------------------------------------------------------- recovery


def sweep_stale(config: WorkerConfig) -> list[str]:
    """Re-queue analyses left ``running`` by a dead worker (heartbeat older than ``lease_s``)."""
    factory = session_factory(config)
    A = db.Analysis
    stale = db.utcnow() - timedelta(seconds=config.lease_s)
    requeued: list[tuple[str, str]] = []
    with factory() as s:
        candidates = s.execute(
            select(A.id, A.queue).where(A.status == db.RUNNING).where(A.heartbeat_at < stale)
        ).all()
    for aid, queue in candidates:
        with factory() as s, s.begin():
            res = s.execute(
                update(A).where(A.id == aid).where(A.status == db.RUNNING).where(A.heartbeat_at < stale)
                .values(status=db.QUEUED, lease_token=None, stage="re-queued after its worker stopped")
            )
        if res.rowcount == 1:
            requeued.append((aid, queue))
    for aid, queue in requeued:
        enqueue_analysis(aid, queue)
        log.warning("re-queued analysis %s (its worker stopped heartbeating)", aid)
    return [aid for aid, _ in requeued]


@celery_app.task(name=TASK_SWEEP, ignore_result=True)
def sweep_stale_task() -> list[str]:
    return sweep_stale(get_config())


def next_run_at(cron: str, tz: str, after: datetime) -> datetime:
    """The first due time of ``cron`` (read in time zone ``tz``) strictly after ``after``, as aware UTC.

    The API validates expressions with ``app.schedules.cron`` (same croniter semantics); workers must not import
    ``app``, so this is the one line they need.
    """
    from zoneinfo import ZoneInfo

    from croniter import croniter

    zone = ZoneInfo(tz)
    return croniter(cron, after.astimezone(zone)).get_next(datetime).astimezone(timezone.utc)


def run_due_schedules(config: WorkerConfig) -> list[str]:
    """Create an ordinary analysis for every due schedule and advance its ``next_run_at`` (Celery beat)."""
    factory = session_factory(config)
    S = db.Schedule
    now = db.utcnow()
    created: list[tuple[str, str]] = []
    with factory() as s, s.begin():
        due = s.scalars(select(S).where(S.enabled.is_(True)).where(S.next_run_at <= now).with_for_update()).all()
        for sched in due:
            analysis = db.Analysis(
                id=db.new_id(), owner_id=sched.owner_id, dataset_id=sched.dataset_id,
                model_spec_id=sched.model_spec_id, schedule_id=sched.id, estimators=sched.estimators,
                status=db.QUEUED, created_at=now, updated_at=now,
            )
            s.add(analysis)
            sched.last_run_at = now
            sched.next_run_at = next_run_at(sched.cron, sched.timezone, now)
            created.append((analysis.id, analysis.queue or "default"))
    for aid, queue in created:
        enqueue_analysis(aid, queue)
    return [aid for aid, _ in created]


@celery_app.task(name=TASK_SCHEDULES, ignore_result=True)
def run_due_schedules_task() -> list[str]:
    return run_due_schedules(get_config())


# ------------------------------------------------------------------------------------- worker signals

_sweeper_stop = threading.Event()


@signals.worker_process_init.connect
def _child_init(**_: Any) -> None:
    _engine_state.clear()
    load_extra_estimator_modules()


@signals.worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    """Every worker runs the stale-analysis sweeper in its main process (cheap: one indexed query)."""
    config = get_config()
    interval = max(1.0, config.lease_s / 3)

    def loop() -> None:
        while not _sweeper_stop.wait(interval):
            try:
                sweep_stale(config)
            except Exception:  # noqa: BLE001 - the DB or broker may be briefly away; try again next round
                log.warning("stale-analysis sweep failed", exc_info=True)

    threading.Thread(target=loop, name="taskgauge-sweeper", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _sweeper_stop.set()
