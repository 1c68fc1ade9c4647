"""Leases on running analyses: one delivery runs an analysis at a time, and a dead worker's analysis is re-run.

A delivery *claims* the analysis with one conditional UPDATE::

    status='queued'  OR  (status='running' AND heartbeat_at < now - LEASE_S)   →  running, new lease_token

so only one delivery runs it at a time; a delivery that finds it finished, cancelled, gone or held by a live
worker returns at once (its message is acked). While it runs, a heartbeat thread refreshes ``heartbeat_at``
every ``HEARTBEAT_S`` and notices cancellation.

A worker killed mid-run: with Redis, ``acks_late`` leaves the message unacked and Redis redelivers it after the
visibility timeout; with any transport (the embedded filesystem one cannot redeliver), every worker runs
:func:`sweep_stale` in a thread, which re-queues analyses left ``running`` with a heartbeat older than
``LEASE_S``. Either way the claim makes the extra delivery harmless.

Poison analyses: ``attempts`` counts claims. An analysis whose worker died ``MAX_ATTEMPTS`` times (every claim
ended with a stale lease, e.g. the pool child was killed for memory) is not claimed or re-queued again: the claim
and the sweeper both end it ``failed`` with the problem :func:`worker_died_problem`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import sessionmaker

from taskgauge import db
from taskgauge.context import Enqueue
from taskgauge.errors import problem
from taskgauge.settings import Settings

log = logging.getLogger("taskgauge.worker")


class Cancelled(Exception):
    """Raised from the progress callback when the analysis was cancelled (or its lease was lost)."""


def worker_died_problem(attempts: int) -> dict[str, Any]:
    return problem(
        "Worker died",
        f"worker died (probably out of memory): the process running this analysis was killed on each of its "
        f"{attempts} attempts, so it is not retried again. Ask for less (fewer or smaller estimators, a smaller "
        "model, a subsample with max_samples, a lower memory_budget_mb) or ask the operator for more memory",
        500,
        "worker-died",
        attempts=attempts,
    )


def _give_up(s: Any, analysis_id: str, stale_before: Any, max_attempts: int) -> bool:
    """Fail the analysis when it is claimable (queued, or running with a stale lease) but out of attempts."""
    A = db.Analysis
    row = s.execute(select(A.attempts).where(A.id == analysis_id)).one_or_none()
    if row is None:
        return False
    now = db.utcnow()
    res = s.execute(
        update(A)
        .where(A.id == analysis_id)
        .where(A.attempts >= max_attempts)
        .where(or_(A.status == db.QUEUED, (A.status == db.RUNNING) & (A.heartbeat_at < stale_before)))
        .values(
            status=db.FAILED,
            lease_token=None,
            stage="failed",
            finished_at=now,
            updated_at=now,
            error=worker_died_problem(int(row.attempts)),
        )
    )
    return res.rowcount == 1


def claim(factory: sessionmaker, analysis_id: str, settings: Settings) -> str | None:
    """Take the analysis' lease; returns the token, or None when this delivery must not run it (finished,
    cancelled, gone, held by a live worker, or out of attempts: then it is marked failed here)."""
    token = str(uuid.uuid4())
    now = db.utcnow()
    stale = now - timedelta(seconds=settings.LEASE_S)
    A = db.Analysis
    with factory() as s, s.begin():
        res = s.execute(
            update(A)
            .where(A.id == analysis_id)
            .where(or_(A.status == db.QUEUED, (A.status == db.RUNNING) & (A.heartbeat_at < stale)))
            .where(A.attempts < settings.MAX_ATTEMPTS)
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
        if res.rowcount == 1:
            return token
        if _give_up(s, analysis_id, stale, settings.MAX_ATTEMPTS):
            log.error("analysis %s failed: its worker died on each of its attempts", analysis_id)
        return None


class Lease:
    """Heartbeat thread + throttled progress writer for one claimed analysis."""

    def __init__(self, factory: sessionmaker, analysis_id: str, token: str, settings: Settings) -> None:
        self.factory, self.analysis_id, self.token, self.settings = factory, analysis_id, token, settings
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{analysis_id[:8]}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def mine(self):
        """An UPDATE of this analysis that applies only while this lease holds it."""
        A = db.Analysis
        return (
            update(A).where(A.id == self.analysis_id).where(A.lease_token == self.token).where(A.status == db.RUNNING)
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.HEARTBEAT_S):
            try:
                with self.factory() as s, s.begin():
                    res = s.execute(self.mine().values(heartbeat_at=db.utcnow()))
                if res.rowcount != 1:  # cancelled, or the lease was taken over
                    self.cancelled.set()
            except Exception:  # noqa: BLE001 - a missed heartbeat is not fatal; the next one may succeed
                log.warning("heartbeat for %s failed", self.analysis_id, exc_info=True)

    def progress(self, fraction: float, stage: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        now = time.monotonic()
        top_stage = stage.split(":", 1)[0]
        if now - self._last_write < self.settings.PROGRESS_INTERVAL_S and top_stage == self._last_stage:
            return
        self._last_write, self._last_stage = now, top_stage
        with self.factory() as s, s.begin():
            res = s.execute(self.mine().values(progress=min(max(float(fraction), 0.0), 0.999), stage=stage[:500]))
        if res.rowcount != 1:
            self.cancelled.set()
            raise Cancelled()


def sweep_stale(factory: sessionmaker, settings: Settings, enqueue: Enqueue) -> list[str]:
    """Re-queue analyses left ``running`` by a dead worker (heartbeat older than ``LEASE_S``); those that have
    used their ``MAX_ATTEMPTS`` end ``failed`` ("worker died") instead. Safe to run in any number of processes
    (workers and the API): every change is one conditional UPDATE."""
    A = db.Analysis
    stale = db.utcnow() - timedelta(seconds=settings.LEASE_S)
    requeued: list[tuple[str, str]] = []
    S = db.AnalysisShard
    unfinished_shards = exists().where(S.analysis_id == A.id, S.status.in_([db.QUEUED, db.RUNNING]))
    with factory() as s:
        # a fanned-out analysis with unfinished shards is the shards' to recover (workers.fanout.sweep_shards)
        candidates = s.execute(
            select(A.id, A.queue).where(A.status == db.RUNNING).where(A.heartbeat_at < stale).where(~unfinished_shards)
        ).all()
    for aid, queue in candidates:
        with factory() as s, s.begin():
            if _give_up(s, aid, stale, settings.MAX_ATTEMPTS):
                log.error("analysis %s failed: its worker died on each of its attempts", aid)
                continue
            res = s.execute(
                update(A)
                .where(A.id == aid)
                .where(A.status == db.RUNNING)
                .where(A.heartbeat_at < stale)
                .values(status=db.QUEUED, lease_token=None, stage="re-queued after its worker stopped")
            )
        if res.rowcount == 1:
            requeued.append((aid, queue))
    for aid, queue in requeued:
        enqueue(aid, queue)
        log.warning("re-queued analysis %s (its worker stopped heartbeating)", aid)
    return [aid for aid, _ in requeued]


def requeue_queued(factory: sessionmaker, enqueue: Enqueue, queues: tuple[str, ...] | None = None) -> list[str]:
    """Send every ``queued`` analysis again (after an embedded worker restart: the filesystem transport loses the
    messages a killed worker had reserved). Extra deliveries are harmless: the claim lets one of them run."""
    A = db.Analysis
    q = select(A.id, A.queue).where(A.status == db.QUEUED)
    if queues:
        q = q.where(A.queue.in_(queues))
    with factory() as s:
        rows = s.execute(q.order_by(A.created_at)).all()
    for aid, queue in rows:
        enqueue(aid, queue)
    return [aid for aid, _ in rows]
