"""Large kNN by parts (``TASKGAUGE_KNN_SHARD_ROWS``, with ``TASKGAUGE_FANOUT``): the exact kNN that mle, twonn and
gride need is computed once, split over shard tasks, and merged exactly; the estimators then read the merged table.

A fanned-out analysis (:mod:`workers.fanout`) of a dataset with more rows than ``KNN_SHARD_ROWS`` that asks for
estimators with a full self-query kNN (registry ``knn_k``: mle without anchors, twonn, gride) runs them in three
stages, each a set of rows in ``analysis_shards`` and a Celery group, the next stage written and sent by the shard
that finishes the previous one (decided under the analysis row's lock, in the transaction that marks it done):

1. ``knn:plan`` loads the data, removes exact duplicates (as the estimators do before any search), takes the
   largest k they need and makes the split: :func:`estimators.knn.plan_parts` (for large inputs the k-means
   grouping of the pruned symmetric search, computed once so every part uses the same, with the rows' embedding,
   which no part then recomputes), stored as a blob;
2. ``knn:bounds:I/M`` (M = ceil(rows / KNN_SHARD_ROWS); only for a grouping): :func:`estimators.knn.bounds_part`,
   the first upper bounds of the rows of part I (an equal range of the grouping's order), from their home
   clusters; to a blob. Serial in the plan they were its largest piece (1.5 of 3.3 s for Fashion-MNIST 70000);
3. ``knn:I/M``: :func:`estimators.knn.kneighbors_part` of the distinct rows, part I of the plan completed with all
   the bounds (:meth:`estimators.knn.KNNPlan.with_bounds`), against the full data; its rows' best lists go to a
   blob. The parts meet every pair of points once between them, so M workers share the work without repeating
   any of it;
4. ``est:NAME`` for each of those estimators: :func:`estimators.knn.merge_parts` of all parts (the exact kNN, bit
   for bit the one-call answer) registered with :func:`estimators.knn.known_neighbours`, so the estimator's own
   ``kneighbors`` call reads it. Its value is the unsharded value.

The other estimators of the analysis (label_sharpness, …) run as ``est:`` shards beside stage 1. Every shard is a
:mod:`workers.fanout` shard: claimed with a lease, heart-beaten (cancellation stops it at its next progress report),
re-queued by the sweeper when its worker dies, idempotent (a result blob is content addressed and named in the
shard row in the transaction that publishes it; a re-delivered shard finds its row done and skips). The blobs
are released when the analysis ends — assembled, failed or cancelled — and by the sweeper for any analysis that
ended without releasing them (:mod:`taskgauge.services.shard_blobs`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from estimators import registry
from estimators.device import resolve_device
from estimators.knn import (
    Duplicates,
    KNNBounds,
    KNNPart,
    KNNPlan,
    bounds_part,
    distinct_rows,
    kneighbors_part,
    known_neighbours,
    merge_parts,
    plan_parts,
)
from estimators.registry import DEFAULT_ESTIMATORS
from taskgauge import db
from taskgauge.context import Context
from taskgauge.pipeline import Limits, plan
from taskgauge.services import shard_blobs
from workers import fanout
from workers.leases import Cancelled

log = logging.getLogger("taskgauge.worker")

PREFIX = "knn:"
PLAN_KEY = "knn:plan"
BOUNDS_PREFIX = "knn:bounds:"
#: the kNN memory budget of the parts when no estimator names one
DEFAULT_BUDGET_MB = 1024
#: most parts of one kNN (each loads the data and repeats some O(rows) work: a tiny KNN_SHARD_ROWS must not make
#: thousands of them)
MAX_PARTS = 64

#: shares of the plan and of the bounds stage in the kNN's progress (the parts share the rest;
#: ``analysis_shards.weight``)
PLAN_WEIGHT = 0.1
BOUNDS_WEIGHT = 0.1

#: ``advance(session) -> {key: queue}``: the next stage's rows, written in the transaction that marks a shard done
#: (``workers.fanout._succeed``; queue None: the analysis' queue)
Advance = Callable[[Session], dict[str, str | None]]


def is_knn(key: str) -> bool:
    return key.startswith(PREFIX)


def part_key(index: int, count: int) -> str:
    return f"{PREFIX}{index}/{count}"


def bounds_key(index: int, count: int) -> str:
    return f"{BOUNDS_PREFIX}{index}/{count}"


def is_part(key: str) -> bool:
    """A part of stage 3 (not the plan, not the bounds stage)."""
    return is_knn(key) and key != PLAN_KEY and not key.startswith(BOUNDS_PREFIX)


def _parse_part(key: str) -> tuple[int, int]:
    index, _, count = key.removeprefix(BOUNDS_PREFIX).removeprefix(PREFIX).partition("/")
    i, m = int(index), int(count)
    if not 0 <= i < m:
        raise ValueError(f"not a kNN part key: {key!r}")
    return i, m


def _requests(analysis: db.Analysis) -> dict[str, dict[str, Any]]:
    return {n: dict(p or {}) for n, p in (analysis.estimators or {n: {} for n in DEFAULT_ESTIMATORS}).items()}


def _k_of(name: str, raw: dict[str, Any], n: int) -> int | None:
    """The k of ``name``'s full self-query on ``n`` distinct points, or None (no such search, or bad params: the
    estimator then runs on its own and says what is wrong)."""
    est = registry.get(name)
    if est.knn_k is None:
        return None
    try:
        return est.knn_k(est.parse_params(raw), n)
    except Exception:  # noqa: BLE001 - see the docstring
        return None


def table_estimators(requests: dict[str, dict[str, Any]], names: list[str], n_samples: int) -> list[str]:
    """Those of ``names`` that make a full self-query kNN (they read the shared table)."""
    return [n for n in names if _k_of(n, requests.get(n) or {}, n_samples) is not None]


def split_estimators(ctx: Context, analysis: db.Analysis, pending: list[str]) -> list[str]:
    """The pending estimators whose kNN is split into parts (empty when the analysis is not split: the setting is
    0, the dataset is not larger than it, or no pending estimator makes a full self-query)."""
    threshold = ctx.settings.KNN_SHARD_ROWS
    if threshold <= 0:
        return []
    with ctx.sessions() as s:
        n_samples = s.scalar(select(db.Dataset.n_samples).where(db.Dataset.id == analysis.dataset_id))
    if n_samples is None or n_samples <= threshold:
        return []
    return table_estimators(_requests(analysis), pending, n_samples)


def parts_for(n_samples: int, shard_rows: int) -> int:
    """How many parts a dataset's kNN is split into: ⌈rows / KNN_SHARD_ROWS⌉, at most :data:`MAX_PARTS` (1 when
    this worker's setting is 0: the worker that fanned the analysis out decided to split it)."""
    if shard_rows <= 0:
        return 1
    return max(1, min(MAX_PARTS, math.ceil(n_samples / shard_rows)))


def first_row() -> dict[str, Any]:
    """The first stage's shard row (``workers.fanout.new_shard`` arguments)."""
    return {"key": PLAN_KEY, "weight": PLAN_WEIGHT}


def _insert(s: Session, analysis_id: str, keys: list[str], weight: float = 1.0) -> dict[str, str | None]:
    """Queued rows for ``keys`` (those that exist are left alone); returns the keys this call inserted (told by
    ``RETURNING``: the driver's rowcount of an ``ON CONFLICT DO NOTHING`` insert is -1 on PostgreSQL), each to go
    to the analysis' queue."""
    S = db.AnalysisShard
    now = db.utcnow()
    dialect = s.get_bind().dialect.name
    new: dict[str, str | None] = {}
    for key in keys:
        values = fanout.new_shard(analysis_id, now, key=key, weight=weight)
        res = s.execute(
            db.insert_ignore(S.__table__, dialect, values, ["analysis_id", "key"]).returning(S.__table__.c.key)
        )
        if res.first() is not None:
            new[key] = None
    return new


def _bind(ctx: Context, analysis_id: str, key: str, token: str) -> Callable[[Session, str], str | None | bool]:
    """Name a blob in this shard's row while its lease holds and its analysis runs (False otherwise); returns the
    blob the row named before."""
    S, A = db.AnalysisShard, db.Analysis

    def bind(s: Session, sha256: str) -> str | None | bool:
        mine = (S.analysis_id == analysis_id, S.key == key, S.lease_token == token, S.status == db.RUNNING)
        before = s.scalar(select(S.blob_sha256).where(*mine))
        res = s.execute(
            update(S)
            .where(*mine)
            .where(exists().where(A.id == analysis_id, A.status == db.RUNNING))
            .values(blob_sha256=sha256)
        )
        return before if res.rowcount == 1 else False

    return bind


def _device(ctx: Context, analysis: db.Analysis) -> torch.device:
    return resolve_device(ctx.settings.DEVICE if analysis.device == "auto" else analysis.device)


def execute(
    ctx: Context,
    analysis: db.Analysis,
    dataset: db.Dataset,
    key: str,
    token: str,
    progress: Callable[[float, str], None],
) -> tuple[Advance, str]:
    """Run the kNN shard ``key`` (the plan or one part) and publish its blob; returns what to write when it is
    marked done (:data:`Advance`) and the device it ran on. Raises ``workers.leases.Cancelled`` through
    ``progress`` when the analysis stops."""
    requests = _requests(analysis)
    names = fanout.costliest_first(
        table_estimators(requests, list(requests), dataset.n_samples), requests, dataset.shape
    )
    data, X, dup = fanout.shard_data(ctx, dataset, progress)
    Xu = distinct_rows(X, dup)
    n = int(Xu.shape[0])
    device = _device(ctx, analysis)
    bind = _bind(ctx, analysis.id, key, token)
    if key == PLAN_KEY:
        progress(0.0, "kNN: planning the parts")
        # the parts' k and memory: the largest k and the smallest budget the estimators would use on their own
        planned = plan(
            {name: requests.get(name) for name in names},
            data,
            memory_budget_mb=ctx.settings.memory_budget_override,
            limits=Limits.from_settings(ctx.settings),
        )
        ks = [k for name in names if (k := _k_of(name, requests.get(name) or {}, n)) is not None]
        k = min(max(ks, default=0), n - 1)
        budgets = [
            b for item in planned.values() if isinstance(b := getattr(item.params, "memory_budget_mb", None), int)
        ]
        if k < 1:  # too few distinct points to search: the estimators run on their own and say so
            return (lambda s: _insert(s, analysis.id, [f"est:{name}" for name in names])), str(device)
        budget = min(budgets, default=DEFAULT_BUDGET_MB)
        count = parts_for(dataset.n_samples, ctx.settings.KNN_SHARD_ROWS)
        # the bounds in a stage of their own (shared by the workers), unless the plan is row blocks (no grouping)
        knn_plan = plan_parts(Xu, k, count, device=device, memory_budget_mb=budget, bounds=False)
        arrays = {**knn_plan.arrays(), "k": np.asarray(k, np.int64), "memory_budget_mb": np.asarray(budget, np.int64)}
        if shard_blobs.publish(ctx, shard_blobs.npz_bytes(arrays), bind) is None:
            raise Cancelled()  # the lease was lost or the analysis ended: nothing was kept
        if knn_plan.needs_bounds:
            keys = [bounds_key(i, count) for i in range(count)]
            return (lambda s: _insert(s, analysis.id, keys, BOUNDS_WEIGHT / count)), str(device)
        keys = [part_key(i, count) for i in range(count)]
        return (lambda s: _insert(s, analysis.id, keys, (1 - PLAN_WEIGHT) / count)), str(device)
    index, count = _parse_part(key)
    arrays = shard_blobs.load_npz(ctx, _plan_blob(ctx, analysis.id))
    knn_plan = KNNPlan.from_arrays(arrays)
    if knn_plan.n != n or knn_plan.parts != count:
        raise RuntimeError(f"the kNN plan of analysis {analysis.id} does not match its data or parts ({key})")
    if key.startswith(BOUNDS_PREFIX):
        progress(0.0, f"kNN bounds {index + 1}/{count}")
        found = bounds_part(
            Xu, int(arrays["k"]), knn_plan, index, device=device, memory_budget_mb=int(arrays["memory_budget_mb"])
        )
        if shard_blobs.publish(ctx, shard_blobs.npz_bytes(found.arrays()), bind) is None:
            raise Cancelled()
        keys = [part_key(i, count) for i in range(count)]
        weight = (1 - PLAN_WEIGHT - BOUNDS_WEIGHT) / count
        return (lambda s: _after_bounds(s, analysis.id, keys, weight)), str(device)
    if knn_plan.needs_bounds:
        knn_plan = knn_plan.with_bounds([KNNBounds.from_arrays(a) for a in _stage_blobs(ctx, analysis.id, count)])
    part = kneighbors_part(
        Xu,
        int(arrays["k"]),
        knn_plan,
        index,
        device=device,
        memory_budget_mb=int(arrays["memory_budget_mb"]),
        progress=lambda f, stage: progress(f, f"kNN part {index + 1}/{count}: {stage}"),
    )
    log.info("kNN part %s of analysis %s: %s", key, analysis.id, part.stats)  # where its seconds went
    if shard_blobs.publish(ctx, shard_blobs.npz_bytes(part.arrays()), bind) is None:
        raise Cancelled()
    return (lambda s: _after_part(s, analysis.id, names)), str(device)


def _all_done(s: Session, analysis_id: str, prefix: str) -> bool:
    """Whether every shard of the analysis whose key starts with ``prefix`` has succeeded."""
    S = db.AnalysisShard
    left = s.scalar(
        select(S.id).where(S.analysis_id == analysis_id, S.key.startswith(prefix), S.status != db.SUCCEEDED).limit(1)
    )
    return left is None


def _after_bounds(s: Session, analysis_id: str, keys: list[str], weight: float) -> dict[str, str | None]:
    """When every part of the bounds stage is done (this one included): the parts."""
    return _insert(s, analysis_id, keys, weight) if _all_done(s, analysis_id, BOUNDS_PREFIX) else {}


def _stage_blobs(ctx: Context, analysis_id: str, count: int) -> list[dict[str, np.ndarray]]:
    """The arrays of every part of the bounds stage (all done: the parts are written when the last one is)."""
    S = db.AnalysisShard
    with ctx.sessions() as s:
        rows = s.execute(
            select(S.key, S.status, S.blob_sha256).where(S.analysis_id == analysis_id, S.key.startswith(BOUNDS_PREFIX))
        ).all()
    if len(rows) != count or any(r.status != db.SUCCEEDED or r.blob_sha256 is None for r in rows):
        raise RuntimeError(f"analysis {analysis_id}: a kNN part started before its bounds were done")
    return [shard_blobs.load_npz(ctx, r.blob_sha256) for r in rows]


def _after_part(s: Session, analysis_id: str, names: list[str]) -> dict[str, str | None]:
    """When every part is done (this one included): the estimators that read the table."""
    return _insert(s, analysis_id, [f"est:{name}" for name in names]) if _all_done(s, analysis_id, PREFIX) else {}


def _plan_blob(ctx: Context, analysis_id: str) -> str:
    S = db.AnalysisShard
    with ctx.sessions() as s:
        sha = s.scalar(select(S.blob_sha256).where(S.analysis_id == analysis_id, S.key == PLAN_KEY))
    if sha is None:
        raise RuntimeError(f"analysis {analysis_id} has no stored kNN plan")
    return sha


@contextlib.contextmanager
def table(
    ctx: Context, analysis: db.Analysis, dataset: db.Dataset, X: torch.Tensor, dup: Duplicates, name: str
) -> Iterator[None]:
    """For an estimator of a split analysis, within the block: the merged kNN table of the distinct rows of the
    flat X (``dup``: its exact duplicates, registered by the caller with ``known_duplicates``) registered with
    ``known_neighbours``, so that ``run_estimators(X_flat=X)`` reads it. Nothing otherwise."""
    S = db.AnalysisShard
    with ctx.sessions() as s:
        rows = s.execute(
            select(S.key, S.status, S.blob_sha256).where(S.analysis_id == analysis.id, S.key.startswith(PREFIX))
        ).all()
    plan_row = next((r for r in rows if r.key == PLAN_KEY), None)
    if (
        plan_row is None
        or plan_row.blob_sha256 is None
        or name not in table_estimators(_requests(analysis), [name], dataset.n_samples)
    ):
        yield
        return
    parts = [r for r in rows if is_part(r.key)]
    if not parts or any(r.status != db.SUCCEEDED or r.blob_sha256 is None for r in parts):
        raise RuntimeError(f"analysis {analysis.id}: an estimator started before its kNN parts were done")
    arrays = shard_blobs.load_npz(ctx, plan_row.blob_sha256, ("k", "n"))  # not the plan's coordinates (MBs)
    k, n = int(arrays["k"]), int(arrays["n"])
    Xu = distinct_rows(X, dup)
    if Xu.shape[0] != n:
        raise RuntimeError(f"analysis {analysis.id}: the kNN plan is for {n} distinct rows, the data has {Xu.shape[0]}")
    merged = merge_parts([KNNPart.from_arrays(shard_blobs.load_npz(ctx, r.blob_sha256)) for r in parts], n, k)
    with known_neighbours(Xu, merged.distances, merged.indices):
        yield


def release(ctx: Context, analysis_id: str) -> None:
    """Delete the analysis' kNN blobs (best effort: the sweeper retries)."""
    try:
        shard_blobs.release(ctx, analysis_id)
    except Exception:  # noqa: BLE001
        log.warning("could not release the kNN blobs of analysis %s", analysis_id, exc_info=True)


def sweep(ctx: Context) -> list[str]:
    """Release the kNN blobs of analyses that ended without releasing them (a cancel while every shard waited in
    the queue, a worker that died after the report); returns their ids."""
    S, A = db.AnalysisShard, db.Analysis
    with ctx.sessions() as s:
        ids = list(
            s.scalars(
                select(S.analysis_id)
                .join(A, A.id == S.analysis_id)
                .where(S.blob_sha256.is_not(None), A.status != db.RUNNING)
                .distinct()
            )
        )
    for aid in ids:
        release(ctx, aid)
    return ids
