"""Fan-out of one analysis over many workers (``TASKGAUGE_FANOUT``): each requested estimator is its own task.

The delivery of ``run_analysis`` that claims the analysis (``workers.leases``) writes one row per pending
estimator to ``analysis_shards`` (unique on ``(analysis_id, key)``, key ``est:NAME``), sends a Celery ``group`` of
``run_shard(analysis_id, key)`` tasks to the analysis' queue, and returns: it holds no worker while the shards run.
No result backend and no scheduler of our own: the chord is our rows.

* The group is sent costliest first (:func:`costliest_first`, the registry's ``cost`` of each estimator on the
  dataset's shape), so that free workers take the longest shards first (LPT); a worker reads the dataset and hashes
  its rows for duplicates once for all the shards it takes and the report's assembly (:func:`shard_data`).
* A shard is claimed like an analysis (one conditional UPDATE: ``queued``, or ``running`` with a stale heartbeat,
  and only while its analysis is ``running``), heart-beaten, and writes its estimator's result row
  (insert-or-ignore) — a re-delivered or re-queued shard adds nothing.
* Its heartbeat also keeps the analysis alive and notices cancellation: a cancelled analysis stops every running
  shard at its next progress report, and a queued shard of it never starts.
* The analysis' progress is the mean of its shards' progress; its stage names the shard that reported last.
* The shard that finishes last (decided under the analysis row's lock) assembles the report from the stored
  results with :func:`taskgauge.pipeline.run_pipeline` (``done=`` all of them: nothing is recomputed) and marks the
  analysis succeeded with the analysis' own lease token. The report's ``environment.shards`` lists each shard's
  worker, device and seconds.
* Recovery (:func:`sweep_shards`, in every worker's sweeper thread): a ``running`` shard whose heartbeat is older
  than ``LEASE_S`` (its worker died) is re-queued; a ``queued`` shard whose message may have been lost (a broker
  restarted without persistence) is sent again after ``2 × LEASE_S``. An analysis with unfinished shards is left
  to these (``workers.leases.sweep_stale`` skips it); one whose shards all finished but whose assembly died is
  re-queued as a whole and then assembled from the stored results.
* A ``subspace`` estimator fans out by trials instead (``sub:*`` shards in rounds, :mod:`workers.fanout_subspace`);
  its shards count as one estimator in the analysis' progress (``weight``), and each is sent to its row's
  ``queue`` (the ``gpu`` queue when a GPU worker exists). A speculative trial the sweep no longer needs is
  ``dropped``: it counts as finished for the assembly.
* Past ``TASKGAUGE_KNN_SHARD_ROWS`` rows, the kNN that mle, twonn and gride share is computed first, in parts
  (``knn:*`` shards, :mod:`workers.fanout_knn`); their ``est:`` shards then read the merged table.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from celery import group
from sqlalchemy import exists, func, or_, select, update

from estimators.base import EstimatorError, no_progress
from estimators.device import describe_device, resolve_device
from estimators.knn import Duplicates, exact_duplicates, known_duplicates
from estimators.registry import DEFAULT_ESTIMATORS
from taskgauge import db
from taskgauge.context import Context
from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.errors import problem
from taskgauge.pipeline import DatasetInfo, Limits, plan, run_estimators, run_pipeline
from taskgauge.services.analyses import store_result, stored_results
from taskgauge.services.datasets import embedded, load_dataset
from taskgauge.services.model_specs import runnable
from workers.celery_app import celery_app
from workers.leases import Cancelled, Lease

log = logging.getLogger("taskgauge.worker")

TASK_RUN_SHARD = "taskgauge.run_shard"
ASSEMBLING = "assembling the report"


def _key(name: str) -> str:
    return f"est:{name}"


def start(ctx: Context, analysis: db.Analysis, token: str, done: dict[str, Any]) -> bool:
    """Fan ``analysis`` out when two or more of its estimators are still to run; returns False otherwise (the
    caller then runs it in one task). Idempotent: a second call re-sends only the shards that are still queued."""
    from workers import fanout_knn, fanout_subspace

    names = list(analysis.estimators or {}) or list(DEFAULT_ESTIMATORS)
    pending = [n for n in names if n not in done]
    sweep = fanout_subspace.ESTIMATOR in pending  # a subspace sweep fans out by trials (workers.fanout_subspace)
    split = fanout_knn.split_estimators(ctx, analysis, pending)  # their kNN first, in parts (workers.fanout_knn)
    if len(pending) < 2 and not sweep and not split:
        return False
    rows: list[dict[str, Any]] = []  # in the order they are sent: chains (a sweep's rounds, the kNN parts) first
    if sweep:
        rows += fanout_subspace.first_round(ctx, analysis)
    if split:
        rows.append(fanout_knn.first_row())
    with ctx.sessions() as s:
        shape = s.scalar(select(db.Dataset.shape).where(db.Dataset.id == analysis.dataset_id)) or [0]
    requests = analysis.estimators or {}
    singles = [n for n in pending if not (sweep and n == fanout_subspace.ESTIMATOR) and n not in split]
    rows += [{"key": _key(n)} for n in costliest_first(singles, requests, shape)]
    S, A = db.AnalysisShard, db.Analysis
    now = db.utcnow()
    with ctx.sessions() as s, s.begin():
        dialect = s.get_bind().dialect.name
        for row in rows:
            s.execute(
                db.insert_ignore(S.__table__, dialect, new_shard(analysis.id, now, **row), ["analysis_id", "key"])
            )
        s.execute(
            update(A)
            .where(A.id == analysis.id, A.lease_token == token, A.status == db.RUNNING)
            .values(stage=f"fan-out: {len(rows)} shards", heartbeat_at=now)
        )
        queued = dict(
            s.execute(select(S.key, S.queue).where(S.analysis_id == analysis.id, S.status == db.QUEUED)).all()
        )
    order = [r["key"] for r in rows]
    keys = sorted(queued, key=lambda k: order.index(k) if k in order else len(order))
    _send(ctx, analysis.id, analysis.queue, keys, queues=queued)
    if split:
        _read_ahead(ctx, analysis.dataset_id)
    return True


def _read_ahead(ctx: Context, dataset_id: str) -> None:
    """After sending a split kNN's plan: read the data into this worker's cache (:func:`shard_data`) while another
    worker plans, so that the part this one takes next starts at once instead of reading it then (a worker that
    takes the plan itself reads it no later than the plan would). Best effort; not a text dataset's (the plan
    embeds it, once)."""
    try:
        with ctx.sessions() as s:
            dataset = s.get(db.Dataset, dataset_id)
        if dataset is not None and math.prod(int(x) for x in (dataset.shape or [0, 0])[1:]) > 0:
            shard_data(ctx, dataset)
    except Exception:  # noqa: BLE001 - a shard reads it again and reports what is wrong
        log.warning("could not read dataset %s ahead of its kNN parts", dataset_id, exc_info=True)


def costliest_first(names: list[str], requests: dict[str, Any], shape: list[int]) -> list[str]:
    """``names`` ordered by the registry's ``cost`` of each on data of ``shape``, the costliest first, those of
    unknown cost (no hook, or bad params: the shard then reports them) before all, ties in the given order. Sent in
    this order, the shards are taken longest first by whichever worker is free: the longest-processing-time rule,
    whose finish is within 4/3 of the best possible on any number of workers. (Taken in the request's order, a
    worker could start the longest shard last while the other one ran out of work.)"""
    from estimators import registry

    n = int(shape[0]) if shape else 0
    d = math.prod(int(x) for x in shape[1:])

    def cost(name: str) -> float:
        try:
            est = registry.get(name)
            if est.cost is None:
                return math.inf
            return float(est.cost(est.parse_params((requests or {}).get(name)), n, d))
        except Exception:  # noqa: BLE001 - see the docstring
            return math.inf

    costs = {name: cost(name) for name in names}
    return sorted(names, key=lambda name: -costs[name])


def new_shard(analysis_id: str, now: Any, *, key: str, queue: str | None = None, weight: float = 1.0) -> dict:
    """The values of a new ``queued`` shard row."""
    return {
        "id": db.new_id(),
        "analysis_id": analysis_id,
        "key": key,
        "status": db.QUEUED,
        "progress": 0.0,
        "attempts": 0,
        "enqueued_at": now,
        "created_at": now,
        "queue": queue,
        "weight": weight,
    }


def _send(
    ctx: Context, analysis_id: str, queue: str | None, keys: list[str], queues: dict[str, str | None] | None = None
) -> None:
    """Send shard tasks, each to its own queue (``queues``) or else the analysis' ``queue``."""
    if keys:
        group(
            run_shard.si(analysis_id, key).set(queue=(queues or {}).get(key) or queue or "default") for key in keys
        ).apply_async()


@celery_app.task(name=TASK_RUN_SHARD, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_shard(analysis_id: str, key: str) -> str:
    from workers.tasks import context

    t0 = time.perf_counter()
    outcome = execute_shard(analysis_id, key, context())
    log.info("run_shard %s %s: %s in %.2fs", analysis_id, key, outcome, time.perf_counter() - t0)
    return outcome


def _claim(ctx: Context, analysis_id: str, key: str) -> str | None:
    S, A = db.AnalysisShard, db.Analysis
    token = str(uuid.uuid4())
    now = db.utcnow()
    stale = now - timedelta(seconds=ctx.settings.LEASE_S)
    parent_running = exists().where(A.id == analysis_id, A.status == db.RUNNING)
    with ctx.sessions() as s, s.begin():
        res = s.execute(
            update(S)
            .where(S.analysis_id == analysis_id, S.key == key)
            .where(or_(S.status == db.QUEUED, (S.status == db.RUNNING) & (S.heartbeat_at < stale)))
            .where(parent_running)
            .values(
                status=db.RUNNING,
                lease_token=token,
                heartbeat_at=now,
                attempts=S.attempts + 1,
                worker=f"{socket.gethostname()}:{os.getpid()}",
                progress=0.0,
            )
        )
        return token if res.rowcount == 1 else None


class ShardLease(Lease):
    """The lease of one shard: its heartbeat also refreshes the analysis' and stops when the analysis is no longer
    running (cancelled or failed); its progress moves the analysis' progress (the mean over its shards)."""

    def __init__(self, ctx: Context, analysis_id: str, key: str, token: str) -> None:
        super().__init__(ctx.sessions, analysis_id, token, ctx.settings)
        self.key = key

    def mine(self):
        S, A = db.AnalysisShard, db.Analysis
        return (
            update(S)
            .where(
                S.analysis_id == self.analysis_id,
                S.key == self.key,
                S.lease_token == self.token,
                S.status == db.RUNNING,
            )
            .where(exists().where(A.id == self.analysis_id, A.status == db.RUNNING))
        )

    def _parent(self):
        A = db.Analysis
        return update(A).where(A.id == self.analysis_id, A.status == db.RUNNING)

    def lock_parent(self, s: Any) -> None:
        """Lock the analysis row first in every transaction that also writes this shard's row: the planner of a
        sweep (workers.fanout_subspace) holds it while it drops other shards, so one order everywhere, no
        deadlock."""
        A = db.Analysis
        s.execute(select(A.id).where(A.id == self.analysis_id).with_for_update())

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.HEARTBEAT_S):
            try:
                with self.factory() as s, s.begin():
                    now = db.utcnow()
                    self.lock_parent(s)
                    res = s.execute(self.mine().values(heartbeat_at=now))
                    s.execute(self._parent().values(heartbeat_at=now))
                if res.rowcount != 1:
                    self.cancelled.set()
            except Exception:  # noqa: BLE001 - a missed heartbeat is not fatal
                log.warning("heartbeat for shard %s/%s failed", self.analysis_id, self.key, exc_info=True)

    def progress(self, fraction: float, stage: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        now = time.monotonic()
        if now - self._last_write < self.settings.PROGRESS_INTERVAL_S:
            return
        self._last_write = now
        with self.factory() as s, s.begin():
            self.lock_parent(s)
            res = s.execute(self.mine().values(progress=min(max(float(fraction), 0.0), 0.999)))
            s.execute(self._parent().values(progress=analysis_progress(s, self.analysis_id), stage=stage[:500]))
        if res.rowcount != 1:
            self.cancelled.set()
            raise Cancelled()


def analysis_progress(s: Any, analysis_id: str) -> float:
    """The analysis' progress: the mean over its estimators of each one's progress, where the shards that share an
    estimator (``sub:*``, one subspace sweep) add up their ``weight`` × progress into one (at most 1)."""
    S = db.AnalysisShard
    units: dict[str, float] = {}
    for key, progress, weight in s.execute(select(S.key, S.progress, S.weight).where(S.analysis_id == analysis_id)):
        unit = key if key.startswith("est:") else key.split(":", 1)[0]
        units[unit] = units.get(unit, 0.0) + float(weight) * float(progress)
    return min(0.999, sum(min(1.0, v) for v in units.values()) / max(1, len(units)))


#: this worker process's last dataset, {(dataset id, blob sha256): (data, flat X, its exact duplicates)}; one entry
_last: dict[tuple[str, str], tuple[CanonicalDataset, torch.Tensor, Duplicates]] = {}


def shard_data(
    ctx: Context, dataset: db.Dataset, progress: Callable[[float, str], None] = no_progress
) -> tuple[CanonicalDataset, torch.Tensor, Duplicates]:
    """``dataset`` as the shards read it (embedded if it is text), its flat X and that X's exact duplicates, loaded
    once per worker process: the next shard of the analysis this worker takes, and the report's assembly, reuse them
    (pass them on with ``known_duplicates(X, dup)``), instead of reading the blob and hashing every row again. One
    dataset at a time (a new one replaces it; the assembly drops it). The shards share these arrays as the estimators
    of a one-task analysis share theirs (``taskgauge.pipeline.run_pipeline``): nothing writes to them."""
    key = (dataset.id, dataset.blob_sha256)
    hit = _last.get(key)
    if hit is None:
        _last.clear()  # free the previous dataset before loading this one
        data = embedded(ctx, dataset, load_dataset(ctx.blobs, dataset), progress=progress)
        X = torch.from_numpy(np.ascontiguousarray(data.flat()))
        hit = _last[key] = (data, X, exact_duplicates(X))
    return hit


def execute_shard(analysis_id: str, key: str, ctx: Context) -> str:
    """Claim and run one shard; the last one assembles the report. Never raises for a bad input."""
    from workers import fanout_knn, fanout_subspace

    if fanout_subspace.is_trial(key):
        return fanout_subspace.execute_trial(analysis_id, key, ctx)
    token = _claim(ctx, analysis_id, key)
    if token is None:
        return "skipped"
    name = key.removeprefix("est:")
    lease = ShardLease(ctx, analysis_id, key, token)
    t0 = time.perf_counter()
    device_name: str | None = None
    advance: Callable[[Any], dict[str, str | None]] | None = None
    try:
        with lease:
            with ctx.sessions() as s:
                analysis = s.get(db.Analysis, analysis_id)
                dataset = s.get(db.Dataset, analysis.dataset_id) if analysis else None
                spec = s.get(db.ModelSpec, analysis.model_spec_id) if analysis and analysis.model_spec_id else None
                done = stored_results(s, analysis_id)
            if analysis is None or dataset is None:
                return "missing"
            if fanout_knn.is_knn(key):
                advance, device_name = fanout_knn.execute(ctx, analysis, dataset, key, token, lease.progress)
            elif name not in done:
                data, X_flat, dup = shard_data(ctx, dataset, lease.progress)
                requests = analysis.estimators or {n: {} for n in DEFAULT_ESTIMATORS}
                model = runnable(ctx, spec)
                planned = plan(
                    {name: requests.get(name)},
                    data,
                    model_spec=model.spec,
                    model_weights=model.weights,
                    memory_budget_mb=ctx.settings.memory_budget_override,
                    limits=Limits.from_settings(ctx.settings),
                )
                device = resolve_device(ctx.settings.DEVICE if analysis.device == "auto" else analysis.device)

                def on_result(n: str, entry: dict[str, Any]) -> None:
                    with ctx.sessions() as s2, s2.begin():
                        store_result(s2, analysis_id, n, entry)

                device_name = describe_device(device)
                with (
                    known_duplicates(X_flat, dup),
                    fanout_knn.table(ctx, analysis, dataset, X_flat, dup, name),  # a split kNN's merged table
                ):
                    run_estimators(
                        data, planned, device=device, progress=lease.progress, on_result=on_result, X_flat=X_flat
                    )
    except Cancelled:
        _close(ctx, analysis_id, key, token, db.CANCELLED)
        fanout_knn.release(ctx, analysis_id)
        return "cancelled"
    except Exception as exc:  # noqa: BLE001 - a failing estimator fails its analysis, never the worker
        if not isinstance(exc, EstimatorError):
            log.exception("shard %s/%s failed", analysis_id, key)
        _close(ctx, analysis_id, key, token, db.FAILED)
        _fail_analysis(ctx, analysis_id, exc)
        return "failed"
    return _succeed(ctx, analysis_id, key, token, time.perf_counter() - t0, device_name, advance=advance)


def _close(ctx: Context, analysis_id: str, key: str, token: str, status: str) -> None:
    S = db.AnalysisShard
    with ctx.sessions() as s, s.begin():
        s.execute(
            update(S)
            .where(S.analysis_id == analysis_id, S.key == key, S.lease_token == token)
            .values(status=status, lease_token=None, finished_at=db.utcnow())
        )


def _fail_analysis(ctx: Context, analysis_id: str, exc: Exception) -> None:
    A = db.Analysis
    if isinstance(exc, EstimatorError):
        error = problem("Estimator rejected the input", str(exc), 422, "estimator-input")
    else:
        error = problem(
            "Analysis failed",
            f"{type(exc).__name__}: {exc}. This is a bug or an unsupported input; "
            "re-run with fewer estimators to find the one that fails, and report it with the dataset "
            "shape.",
            500,
            "analysis-failed",
        )
    with ctx.sessions() as s, s.begin():
        s.execute(
            update(A)
            .where(A.id == analysis_id, A.status == db.RUNNING)
            .values(status=db.FAILED, error=error, finished_at=db.utcnow(), lease_token=None, stage="failed")
        )
    from workers import fanout_knn

    fanout_knn.release(ctx, analysis_id)


def _succeed(
    ctx: Context,
    analysis_id: str,
    key: str,
    token: str,
    seconds: float,
    device: str | None,
    *,
    result: dict[str, Any] | None = None,
    advance: Callable[[Any], dict[str, str | None]] | None = None,
) -> str:
    """Mark the shard done (with its ``result`` record, if any); the one that finds no unfinished sibling (under the
    analysis row's lock) assembles. ``advance(session)``, called under that lock once the shard is marked, may add
    shards (a sweep's next round) and returns them as {key: queue}; they are sent after the commit."""
    S, A = db.AnalysisShard, db.Analysis
    added: dict[str, str | None] = {}
    with ctx.sessions() as s, s.begin():
        parent = s.execute(
            select(A.status, A.stage, A.lease_token, A.queue).where(A.id == analysis_id).with_for_update()
        ).one_or_none()
        res = s.execute(
            update(S)
            .where(S.analysis_id == analysis_id, S.key == key, S.lease_token == token)
            .values(
                status=db.SUCCEEDED,
                lease_token=None,
                progress=1.0,
                seconds=seconds,
                device=device,
                finished_at=db.utcnow(),
                result=result,
            )
        )
        if res.rowcount != 1 or parent is None or parent.status != db.RUNNING:
            return "done (lease lost or analysis finished)"
        if advance is not None:
            added = advance(s)
        left = s.scalar(
            select(func.count())
            .select_from(S)
            .where(S.analysis_id == analysis_id, S.status.not_in([db.SUCCEEDED, db.DROPPED]))
        )
        assemble = not left and parent.stage != ASSEMBLING
        if assemble:
            s.execute(update(A).where(A.id == analysis_id).values(stage=ASSEMBLING, heartbeat_at=db.utcnow()))
        parent_token = parent.lease_token
    if added:
        _send(ctx, analysis_id, parent.queue, list(added), queues=added)
        return f"done, sent {len(added)} shards"
    return _assemble(ctx, analysis_id, parent_token) if assemble else "done"


def _assemble(ctx: Context, analysis_id: str, parent_token: str) -> str:
    from workers.tasks import _finish

    S = db.AnalysisShard
    with ctx.sessions() as s:
        analysis = s.get(db.Analysis, analysis_id)
        dataset = s.get(db.Dataset, analysis.dataset_id)
        spec = s.get(db.ModelSpec, analysis.model_spec_id) if analysis.model_spec_id else None
        done = stored_results(s, analysis_id)
        shards = [
            {"key": r.key, "worker": r.worker, "device": r.device, "seconds": r.seconds, "attempts": r.attempts}
            for r in s.scalars(select(S).where(S.analysis_id == analysis_id).order_by(S.key))
        ]
    model = runnable(ctx, spec)
    data, X_flat, dup = shard_data(ctx, dataset)
    with known_duplicates(X_flat, dup):  # the report's duplicate count: this worker's shards found them already
        report = run_pipeline(
            data,
            analysis.estimators or None,
            info=DatasetInfo(name=dataset.name, id=dataset.id, sha256=dataset.sha256),
            device=ctx.settings.DEVICE if analysis.device == "auto" else analysis.device,
            model_spec=model.spec,
            model_weights=model.weights,
            memory_budget_mb=ctx.settings.memory_budget_override,
            analysis_id=analysis_id,
            done=done,
            environment={"shards": shards},
            limits=Limits.from_settings(ctx.settings),
        )
    _last.clear()  # the analysis is over: hold no dataset while idle
    from workers import fanout_knn

    outcome = _finish(ctx.sessions, analysis, parent_token, report)
    fanout_knn.release(ctx, analysis_id)
    return "assembled: " + outcome


def sweep_shards(ctx: Context) -> list[str]:
    """Re-queue shards whose worker died, and re-send queued shards whose message may have been lost."""
    S, A = db.AnalysisShard, db.Analysis
    now = db.utcnow()
    stale = now - timedelta(seconds=ctx.settings.LEASE_S)
    lost = now - timedelta(seconds=2 * ctx.settings.LEASE_S)
    parent_running = exists().where(A.id == S.analysis_id, A.status == db.RUNNING)
    resend: list[tuple[str, str, str | None]] = []
    with ctx.sessions() as s, s.begin():
        rows = s.execute(
            select(S.id, S.analysis_id, S.key, func.coalesce(S.queue, A.queue))
            .join(A, A.id == S.analysis_id)
            .where(A.status == db.RUNNING)
            .where(
                or_(
                    (S.status == db.RUNNING) & (S.heartbeat_at < stale),
                    (S.status == db.QUEUED) & (S.enqueued_at < lost),
                )
            )
        ).all()
        for sid, aid, key, queue in rows:
            res = s.execute(
                update(S)
                .where(S.id == sid)
                .where(parent_running)
                .where(
                    or_(
                        (S.status == db.RUNNING) & (S.heartbeat_at < stale),
                        (S.status == db.QUEUED) & (S.enqueued_at < lost),
                    )
                )
                .values(status=db.QUEUED, lease_token=None, enqueued_at=now)
            )
            if res.rowcount == 1:
                resend.append((aid, key, queue))
    for aid, key, queue in resend:
        log.warning("re-sending shard %s of analysis %s (worker stopped, or message lost)", key, aid)
        _send(ctx, aid, queue, [key])
    from workers import fanout_knn

    fanout_knn.sweep(ctx)  # kNN blobs of analyses that ended without releasing them
    return [f"{aid}/{key}" for aid, key, _ in resend]
