"""Celery tasks: ``run_analysis(analysis_id)`` and the due-schedule scan; thin: bookkeeping only.

The analysis itself is :func:`taskgauge.pipeline.run_pipeline`, the function the CLI's local mode calls;
:func:`execute_analysis` is the plain function behind the task (testable without Celery). Leases and the
stale-analysis sweeper are :mod:`workers.leases`.

Results are written one row per estimator as they finish (unique on ``analysis_id, estimator``;
insert-or-ignore), and a re-run passes the stored ones to ``run_pipeline(done=…)`` so they are neither
recomputed nor duplicated. The report is written once (unique on ``analysis_id``) in the same transaction that
marks the analysis succeeded. A failing estimator marks the analysis ``failed`` with an RFC 9457 problem
document; the exception does not escape the task, so the worker lives on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from estimators.base import EstimatorError
from taskgauge import db
from taskgauge.context import Context
from taskgauge.errors import problem
from taskgauge.services.analyses import store_result, stored_results
from taskgauge.services.datasets import embedded, load_dataset
from taskgauge.services.model_specs import runnable
from taskgauge.services.schedules import run_due
from workers.celery_app import (
    TASK_RUN_ANALYSIS,
    TASK_SCHEDULES,
    celery_app,
    enqueue_analysis,
    get_settings,
    ready_marker,
)
from workers.leases import Cancelled, Lease, claim, sweep_stale

log = logging.getLogger("taskgauge.worker")

_contexts: dict[Any, Context] = {}


def context() -> Context:
    """The process's service context (rebuilt after a fork: engines must not cross process boundaries)."""
    settings = get_settings()
    key = (os.getpid(), settings.DATABASE_URL)
    if key not in _contexts:
        _contexts.clear()
        # SQLite: a worker waits longer for the write lock than an API request (nobody is waiting on a socket,
        # and a failed result write would fail the analysis)
        pool = (
            {"busy_timeout_s": max(60.0, settings.SQLITE_BUSY_TIMEOUT_S)}
            if settings.is_sqlite
            else {"pool_size": 2, "max_overflow": 2}
        )
        _contexts[key] = Context.build(settings, enqueue_analysis, **pool)
    return _contexts[key]


@celery_app.task(name=TASK_RUN_ANALYSIS, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_analysis(analysis_id: str) -> str:
    """Run one analysis by id (idempotent; see :mod:`workers.leases`). Returns what happened, for the logs."""
    t0 = time.perf_counter()
    outcome = execute_analysis(analysis_id, context())
    log.info("run_analysis %s: %s in %.2fs", analysis_id, outcome, time.perf_counter() - t0)
    return outcome


@celery_app.task(name=TASK_SCHEDULES, ignore_result=True)
def run_due_schedules() -> list[str]:
    """Celery beat's scan: an ordinary analysis for every due schedule (:func:`taskgauge.services.schedules.run_due`)."""
    return run_due(context())


def execute_analysis(analysis_id: str, ctx: Context) -> str:
    """Claim, run and persist one analysis. Never raises for a bad analysis; returns the outcome."""
    from taskgauge.pipeline import DatasetInfo, Limits, run_pipeline

    factory, settings = ctx.sessions, ctx.settings
    started = time.monotonic()
    token = claim(factory, analysis_id, settings)
    if token is None:
        with factory() as s:
            row = s.get(db.Analysis, analysis_id)
        return "missing" if row is None else f"skipped ({row.status})"

    lease = Lease(factory, analysis_id, token, settings)
    try:
        with lease:
            with factory() as s:
                analysis = s.get(db.Analysis, analysis_id)
                dataset = s.get(db.Dataset, analysis.dataset_id) if analysis else None
                spec_row = s.get(db.ModelSpec, analysis.model_spec_id) if analysis and analysis.model_spec_id else None
                done = stored_results(s, analysis_id)
            if analysis is None or dataset is None:
                return "missing"
            if settings.FANOUT:
                from workers import fanout

                if fanout.start(ctx, analysis, token, done):
                    return "fanned out"
            data = embedded(ctx, dataset, load_dataset(ctx.blobs, dataset), progress=lease.progress)
            model = runnable(ctx, spec_row)  # uploaded weights: local once per host, loaded once per process

            def on_result(name: str, entry: dict[str, Any]) -> None:
                with factory() as s2, s2.begin():
                    store_result(s2, analysis_id, name, entry)

            report = run_pipeline(
                data,
                analysis.estimators or None,
                info=DatasetInfo(name=dataset.name, id=dataset.id, sha256=dataset.sha256),
                device=settings.DEVICE if analysis.device == "auto" else analysis.device,
                model_spec=model.spec,
                model_weights=model.weights,
                memory_budget_mb=settings.memory_budget_override,
                analysis_id=analysis_id,
                progress=lease.progress,
                on_result=on_result,
                done=done,
                limits=Limits.from_settings(settings),
            )
            return _finish(factory, analysis, token, report)
    except Cancelled:
        _end(factory, analysis_id, token, None, cancelled=True)
        return "cancelled"
    except EstimatorError as exc:
        _end(factory, analysis_id, token, problem("Estimator rejected the input", str(exc), 422, "estimator-input"))
        return "failed (estimator input)"
    except SoftTimeLimitExceeded:
        _end(factory, analysis_id, token, time_limit_problem(settings.TASK_SOFT_TIME_LIMIT_S))
        return "failed (time limit)"
    except Exception as exc:  # noqa: BLE001 - any estimator bug fails this analysis, never the worker
        if _soft_time_limit(exc, time.monotonic() - started, settings.TASK_SOFT_TIME_LIMIT_S):
            log.warning("analysis %s stopped at its soft time limit (%s)", analysis_id, type(exc).__name__)
            _end(factory, analysis_id, token, time_limit_problem(settings.TASK_SOFT_TIME_LIMIT_S))
            return "failed (time limit)"
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


def _soft_time_limit(exc: BaseException, elapsed: float, limit: float) -> bool:
    """Whether ``exc`` is the soft time limit in disguise: Celery raises SoftTimeLimitExceeded from a signal handler
    wherever the analysis is, and a library it interrupts (e.g. psycopg inside a progress write) may re-raise it
    as its own error. Its chain names it, or, failing that, the run has reached the limit."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            break
        if isinstance(seen, SoftTimeLimitExceeded):
            return True
        seen = seen.__cause__ or seen.__context__
    return elapsed >= limit - 1.0  # the task started a moment before the claim


def time_limit_problem(seconds: float) -> dict[str, Any]:
    return problem(
        "Time limit exceeded",
        f"the analysis ran longer than the time limit of {seconds:g} s (TASKGAUGE_TASK_SOFT_TIME_LIMIT_S) and was "
        "stopped; ask for less (fewer epochs or trials, a subsample with max_samples, fewer estimators) or ask the "
        "operator to raise the limit",
        422,
        "time-limit",
        limit_s=seconds,
    )


def _finish(factory: sessionmaker, analysis: db.Analysis, token: str, report: dict[str, Any]) -> str:
    A = db.Analysis
    now = db.utcnow()
    with factory() as s, s.begin():
        current = s.execute(select(A.status, A.lease_token).where(A.id == analysis.id).with_for_update()).one_or_none()
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
            .values(
                status=db.SUCCEEDED,
                progress=1.0,
                stage="done",
                report_id=report_id,
                finished_at=now,
                lease_token=None,
                error=None,
            )
        )
    return "succeeded"


def _end(
    factory: sessionmaker, analysis_id: str, token: str, error: dict[str, Any] | None, *, cancelled: bool = False
) -> None:
    A = db.Analysis
    now = db.utcnow()
    with factory() as s, s.begin():
        if cancelled:  # the API already wrote 'cancelled'; just close the row if it is still ours
            s.execute(
                update(A)
                .where(A.id == analysis_id)
                .where(A.status == db.RUNNING)
                .where(A.lease_token == token)
                .values(status=db.CANCELLED, finished_at=now, lease_token=None)
            )
            s.execute(update(A).where(A.id == analysis_id).where(A.status == db.CANCELLED).values(lease_token=None))
            return
        s.execute(
            update(A)
            .where(A.id == analysis_id)
            .where(A.status == db.RUNNING)
            .where(A.lease_token == token)
            .values(status=db.FAILED, error=error, finished_at=now, lease_token=None, stage="failed")
        )


# ------------------------------------------------------------------------------------- worker signals

_sweeper_stop = threading.Event()


@signals.worker_init.connect
def _warm_up(**_: Any) -> None:
    """The main process, before its pool forks: import the estimators (torch with them) and configure the ORM
    mappers once, so that every pool child inherits both instead of paying for them in its first analysis — on a
    busy CPU, at the same moment the API is answering the requests that queued that analysis."""
    from sqlalchemy.orm import configure_mappers

    from estimators import registry

    registry.all_estimators()
    configure_mappers()


@signals.worker_process_init.connect
def _child_init(**_: Any) -> None:
    """A pool child: its own database engine, and torch/BLAS threads set to its share of the cores."""
    _contexts.clear()
    from estimators.device import set_threads

    set_threads(celery_app.conf.get("taskgauge_threads") or get_settings().worker_threads())


@signals.worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    """Every worker runs the stale-analysis sweeper in its main process (cheap: one indexed query)."""
    settings = get_settings()
    interval = max(1.0, settings.LEASE_S / 3)
    if get_settings().EMBEDDED_WORKER:  # `taskgauge serve`'s supervisor waits for this (/readyz)
        try:
            ready_marker(settings.broker_dir, os.getpid()).touch()
        except OSError:
            log.warning("could not write the worker's ready marker", exc_info=True)

    def loop() -> None:
        while not _sweeper_stop.wait(interval):
            try:
                ctx = context()
                sweep_stale(ctx.sessions, settings, ctx.enqueue)
                from workers import fanout

                fanout.sweep_shards(ctx)
            except Exception:  # noqa: BLE001 - the DB or broker may be briefly away; try again next round
                log.warning("stale-analysis sweep failed", exc_info=True)

    threading.Thread(target=loop, name="taskgauge-sweeper", daemon=True).start()


@signals.task_failure.connect
def _hard_time_limit(sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any) -> None:
    """The worker's main process: the hard time limit killed the child running an analysis; fail it now (its
    lease token died with the child, so any ``running`` row of this analysis is the killed run's)."""
    if getattr(sender, "name", None) != TASK_RUN_ANALYSIS or not isinstance(exception, TimeLimitExceeded):
        return
    try:
        analysis_id = str((args or [None])[0])
        settings, A = get_settings(), db.Analysis
        with context().sessions() as s, s.begin():
            s.execute(
                update(A)
                .where(A.id == analysis_id)
                .where(A.status == db.RUNNING)
                .values(
                    status=db.FAILED,
                    finished_at=db.utcnow(),
                    lease_token=None,
                    stage="failed",
                    error=time_limit_problem(settings.TASK_SOFT_TIME_LIMIT_S),
                )
            )
    except Exception:  # noqa: BLE001 - the sweeper and max_attempts still end it
        log.warning("could not fail analysis %s after its hard time limit", args, exc_info=True)


@signals.beat_embedded_init.connect
def _beat_dies_with_its_worker(**_: Any) -> None:
    """The beat process embedded in a worker (``--beat``, the embedded default) is killed by the kernel when the
    worker's main process dies, even by SIGKILL: no orphaned beat keeps filling the queue (Linux; elsewhere
    ``taskgauge serve``'s supervisor kills the worker's process group)."""
    try:
        import ctypes
        import signal as _signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(_signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@signals.worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _sweeper_stop.set()
