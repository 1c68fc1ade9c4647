"""A subspace sweep fanned out by trials (``TASKGAUGE_FANOUT``; issue 17): each round is a Celery group of trial shards.

The sweep is the estimator's own four pieces (:mod:`estimators.subspace.trials`): ``prepare``, ``plan_round``,
``run_trial``, ``aggregate``; here they run in shards of :mod:`workers.fanout` (same table, claim, lease, heartbeat,
cancellation and recovery sweep), so the result is the in-process estimator's, value for value.

* **Keys.** ``sub:baseline`` (direct training of every seed), ``sub:<d>`` (every seed at d, after its lr range
  test), ``sub:<d>@<lr>`` (a bisection midpoint that takes its neighbours' lr). One shard trains all the seeds of
  its d at once (vmapped, as in process: splitting the seeds would change the arithmetic, and cost more).
* **Rounds.** :func:`first_round` (called by :func:`workers.fanout.start`) plans the first round: the baseline
  beside the first d, plus speculative trials. A trial shard stores its record (small JSON) in its row's ``result``;
  then every trial shard — under the analysis row's lock, in the transaction that marks it done — asks the planner
  for the next round with the ``sub:*`` rows still queued or running as *pending*, inserts its rows and sends them
  after the commit. So a freed worker gets the next trial at once instead of waiting for the slowest trial of its
  round. When the path is complete the shard aggregates the records and writes the ``subspace`` result row in
  that same transaction.
* **Speculation.** At most ``TASKGAUGE_FANOUT_TRIALS`` trial groups are in flight, by default as many as live
  workers consume the trials' queue: the d the sequential sweep needs next (always sent), and the trials it is
  likeliest to need besides it (both children of a bisection midpoint in flight, the likelier first; see
  :mod:`estimators.subspace.trials`). A running trial keeps what it has shown in its row's ``result`` until its
  record replaces it (:class:`_Reporter`): the lr its range test chose (planning gives a midpoint beside it its
  final key), and — once its seeds' best scores reach the level, which under the plateau protocol means it passes
  for sure — those scores, and it then plans the next trials itself, while it still trains. Trials in flight that
  the path can no longer use are **dropped** (status ``dropped``, under the same lock): a queued one is skipped
  when delivered, a running one stops at its next progress report, and both count as finished, so the assembly
  never waits on them. ``environment.shards`` lists them with the rest; their records, if any, are never used.
* **Queue.** ``gpu`` when a worker consumes it (:func:`workers.gpu.gpu_queue_consumed`) and the analysis may use a
  GPU (device ``auto`` or ``cuda``), else the analysis' queue. Stored per row, so the recovery sweep re-sends a
  dead trial to the same queue.
* **Idempotent.** A trial shard is claimed once (a duplicate delivery is skipped), rows are insert-or-ignore on
  (analysis, key), and a round is planned from the stored records alone, so a re-delivered or re-run shard adds
  nothing. A cancelled analysis stops its running trials at their next progress report, and no round follows.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from sqlalchemy import select, update

from estimators.device import describe_device, resolve_device
from estimators.subspace.trials import (
    BASELINE,
    Problem,
    Trial,
    aggregate,
    decode,
    encode,
    plan_round,
    prepare,
    run_trial,
    sweep_path,
)
from taskgauge import db
from taskgauge.context import Context
from taskgauge.pipeline import Limits, PlannedEstimator, estimator_inputs, plan
from taskgauge.report import result_to_json
from taskgauge.services.analyses import DEFAULT_QUEUE, GPU_QUEUE, store_result, stored_results
from taskgauge.services.datasets import embedded, load_dataset
from taskgauge.services.model_specs import runnable
from workers import fanout
from workers.gpu import gpu_queue_consumed
from workers.leases import Cancelled

log = logging.getLogger("taskgauge.worker")

ESTIMATOR = "subspace"
PREFIX = "sub:"


def is_trial(key: str) -> bool:
    return key.startswith(PREFIX)


def _sweep(
    ctx: Context, analysis: db.Analysis, dataset: db.Dataset, spec: db.ModelSpec | None, device: Any, progress=None
) -> tuple[PlannedEstimator, Problem]:
    """The analysis' subspace estimator (params as the pipeline plans them) and its prepared problem."""
    data = embedded(ctx, dataset, load_dataset(ctx.blobs, dataset), progress=progress)
    requests = analysis.estimators or {}
    model = runnable(ctx, spec)  # an uploaded model: its weights brought to this host
    item = plan(
        {ESTIMATOR: requests.get(ESTIMATOR)},
        data,
        model_spec=model.spec,
        model_weights=model.weights,
        memory_budget_mb=ctx.settings.memory_budget_override,
        limits=Limits.from_settings(ctx.settings),
    )[ESTIMATOR]
    X, y = estimator_inputs(data, item)
    return item, prepare(X, y, item.params, device=device)


def trial_queue(ctx: Context, analysis: db.Analysis) -> str:
    """``gpu`` when a worker consumes it and the analysis may run on a GPU; else the analysis' queue."""
    if analysis.device != "cpu" and gpu_queue_consumed(ctx.settings):
        return GPU_QUEUE
    return analysis.queue or DEFAULT_QUEUE


def round_width(ctx: Context, s: Any, queue: str) -> int:
    """Trial groups in flight at once: ``TASKGAUGE_FANOUT_TRIALS``, or the task slots of live workers on ``queue``."""
    if ctx.settings.FANOUT_TRIALS:
        return ctx.settings.FANOUT_TRIALS
    W = db.WorkerHeartbeat
    live = db.utcnow() - timedelta(seconds=ctx.settings.LEASE_S)
    rows = s.execute(select(W.queues, W.concurrency).where(W.heartbeat_at >= live)).all()
    return max(1, sum(int(c or 1) for queues, c in rows if queue in (queues or [])))


def _rows(trials: list[Trial], queue: str, problem: Problem) -> list[dict[str, Any]]:
    weight = 1.0 / problem.config.expected_trials  # a full sweep adds up to one estimator's progress
    return [{"key": PREFIX + t.key, "queue": queue, "weight": weight} for t in trials]


def first_round(ctx: Context, analysis: db.Analysis) -> list[dict[str, Any]]:
    """The rows of the sweep's first round (baseline + first d + speculation), for :func:`workers.fanout.start`;
    none when the sweep's rows exist already (a re-delivered analysis task: the queued ones are sent again)."""
    S = db.AnalysisShard
    with ctx.sessions() as s:
        if s.scalar(select(S.id).where(S.analysis_id == analysis.id, S.key.startswith(PREFIX)).limit(1)):
            return []
        dataset = s.get(db.Dataset, analysis.dataset_id)
        spec = s.get(db.ModelSpec, analysis.model_spec_id) if analysis.model_spec_id else None
    _, problem = _sweep(ctx, analysis, dataset, spec, torch.device("cpu"))  # the plan needs no accelerator
    queue = trial_queue(ctx, analysis)
    with ctx.sessions() as s:
        width = round_width(ctx, s, queue)
    return _rows(plan_round(problem.config, {}, width=width), queue, problem)


def execute_trial(analysis_id: str, key: str, ctx: Context) -> str:
    """Claim and run one trial shard, then plan the trials to send next (or finish the sweep)."""
    token = fanout._claim(ctx, analysis_id, key)
    if token is None:
        return "skipped"
    lease = fanout.ShardLease(ctx, analysis_id, key, token)
    t0 = time.perf_counter()
    try:
        with lease:
            with ctx.sessions() as s:
                analysis = s.get(db.Analysis, analysis_id)
                dataset = s.get(db.Dataset, analysis.dataset_id) if analysis else None
                spec = s.get(db.ModelSpec, analysis.model_spec_id) if analysis and analysis.model_spec_id else None
            if analysis is None or dataset is None:
                return "missing"
            trial = Trial.from_key(key.removeprefix(PREFIX))
            device = resolve_device(ctx.settings.DEVICE if analysis.device == "auto" else analysis.device)
            item, problem = _sweep(ctx, analysis, dataset, spec, device, progress=lease.progress)
            seeds = item.params.seeds
            record = run_trial(
                problem,
                trial,
                progress=lambda k, stage: lease.progress(k / seeds, f"{ESTIMATOR}: {stage}"),
                partial=_Reporter(ctx, lease, analysis, item, problem),
            )
        return fanout._succeed(
            ctx,
            analysis_id,
            key,
            token,
            time.perf_counter() - t0,
            describe_device(device),
            result=record,
            advance=lambda s: _advance(ctx, s, analysis, item, problem),
        )
    except Cancelled:
        fanout._close(ctx, analysis_id, key, token, db.CANCELLED)
        with ctx.sessions() as s:
            status = s.scalar(select(db.AnalysisShard.status).where(*_row(analysis_id, key)))
        return "dropped" if status == db.DROPPED else "cancelled"
    except Exception as exc:  # noqa: BLE001 - a failing trial fails its analysis, never the worker
        log.warning("trial shard %s/%s failed", analysis_id, key, exc_info=True)
        fanout._close(ctx, analysis_id, key, token, db.FAILED)
        fanout._fail_analysis(ctx, analysis_id, exc)
        return "failed"


def _row(analysis_id: str, key: str) -> tuple[Any, ...]:
    S = db.AnalysisShard
    return (S.analysis_id == analysis_id, S.key == key)


class _Reporter:
    """What a running trial shows before it ends (:func:`run_trial`'s ``partial``), kept in its row's ``result``
    until its record replaces it: the lr its range test chose, at once; its seeds' best scores so far once their
    mean reaches the level (under the plateau protocol the trial then passes for sure) — and then the next trials
    are planned at once, with this one still running (:func:`_advance`)."""

    def __init__(
        self, ctx: Context, lease: fanout.ShardLease, analysis: db.Analysis, item: PlannedEstimator, problem: Problem
    ) -> None:
        self.ctx, self.lease, self.analysis, self.item, self.problem = ctx, lease, analysis, item, problem
        self.lr: float | None = None
        self.passed = False
        self.level: float | None = problem.config.level(None)  # a global baseline's level is known at once
        self._asked = -math.inf

    def __call__(self, info: dict[str, Any]) -> None:
        if info["lr"] != self.lr:
            self.lr = info["lr"]
            self._write({"lr": self.lr}, plan=False)
        best = info.get("best")
        if best is None or self.passed:
            return
        level = self._level()
        if level is None or not float(np.mean(best)) >= level:
            return
        self.passed = True
        self._write({"lr": self.lr, "best": best}, plan=True)

    def _level(self) -> float | None:
        """The level, once the baseline's record is in (asked at most once a second)."""
        if self.level is None and time.monotonic() - self._asked >= 1.0:
            self._asked = time.monotonic()
            with self.ctx.sessions() as s:
                S = db.AnalysisShard
                row = s.execute(
                    select(S.status, S.result).where(*_row(self.analysis.id, PREFIX + BASELINE))
                ).one_or_none()
            if row is not None and row.status == db.SUCCEEDED and row.result is not None:
                self.level = self.problem.config.level(decode(row.result))
        return self.level

    def _write(self, partial: dict[str, Any], *, plan: bool) -> None:
        lease, added = self.lease, {}
        with self.ctx.sessions() as s, s.begin():
            lease.lock_parent(s)
            res = s.execute(lease.mine().values(result=encode(partial)))
            if res.rowcount != 1:  # dropped, or the analysis no longer runs
                lease.cancelled.set()
                raise Cancelled()
            if plan:
                added = _advance(self.ctx, s, self.analysis, self.item, self.problem)
        if added:
            fanout._send(self.ctx, self.analysis.id, self.analysis.queue, list(added), queues=added)


def _advance(
    ctx: Context, s: Any, analysis: db.Analysis, item: PlannedEstimator, problem: Problem
) -> dict[str, str | None]:
    """Under the analysis row's lock (after a trial is marked done, or while one that passes for sure still runs):
    plan from the records so far, with the trials still queued or running as pending and what they have shown so
    far; drop those the path can no longer use (a running one stops at its next progress report, a queued one never
    starts), then insert and return the trials to send now ({key: queue}). Once the sweep's path is complete,
    aggregate and store the ``subspace`` result (every trial still in flight is dropped, so the assembly follows at
    once)."""
    S = db.AnalysisShard
    rows = s.execute(
        select(S.key, S.status, S.result, S.queue, S.created_at).where(
            S.analysis_id == analysis.id, S.key.startswith(PREFIX)
        )
    ).all()
    if any(r.status in (db.FAILED, db.CANCELLED) for r in rows):
        return {}  # the analysis fails or is cancelled: no further round
    records = {r.key.removeprefix(PREFIX): decode(r.result) for r in rows if r.status == db.SUCCEEDED}
    flying = [r for r in rows if r.status in (db.QUEUED, db.RUNNING)]
    pending = [r.key.removeprefix(PREFIX) for r in flying]
    partial = {r.key.removeprefix(PREFIX): decode(r.result) for r in flying if r.result}
    queue = rows[0].queue or trial_queue(ctx, analysis)
    path = sweep_path(problem.config, records, width=round_width(ctx, s, queue), pending=pending, partial=partial)
    now = db.utcnow()
    if path.off_path:
        s.execute(
            update(S)
            .where(S.analysis_id == analysis.id, S.key.in_([PREFIX + k for k in path.off_path]))
            .where(S.status.in_([db.QUEUED, db.RUNNING]))
            .values(status=db.DROPPED, lease_token=None, finished_at=now)
        )
    trials = path.round
    if trials:
        dialect = s.get_bind().dialect.name
        new = _rows(trials, queue, problem)
        for row in new:  # a dropped trial needed after all (never, by the planner's rule) is queued again
            s.execute(
                update(S)
                .where(S.analysis_id == analysis.id, S.key == row["key"], S.status == db.DROPPED)
                .values(status=db.QUEUED, enqueued_at=now, finished_at=None, result=None)
            )
            s.execute(
                db.insert_ignore(
                    S.__table__, dialect, fanout.new_shard(analysis.id, now, **row), ["analysis_id", "key"]
                )
            )
        ds = ", ".join("baseline" if t.d is None else f"d={t.d}" for t in trials)
        s.execute(update(db.Analysis).where(db.Analysis.id == analysis.id).values(stage=f"{ESTIMATOR}: trials {ds}"))
        return {row["key"]: queue for row in new}
    if path.complete and ESTIMATOR not in stored_results(s, analysis.id):
        started = min(r.created_at for r in rows)
        seconds = (now - started).total_seconds()
        result = aggregate(problem, records, total_s=seconds)
        store_result(s, analysis.id, ESTIMATOR, result_to_json(item.estimator, item.params, result, seconds=seconds))
    return {}
