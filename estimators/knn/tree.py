"""The exact kNN of low-dimensional data through a k-d tree (scipy's ``cKDTree``), when it costs less than the
brute force (docs/methods.md §0).

Below ``_PRUNE_MIN_DIM`` features the engine has no pruning, and its brute force costs O(n²) whatever the data. A
k-d tree answers a query in about O(log n) distance evaluations while the data's intrinsic dimension is small (a few
units), and degrades towards the brute force, or far beyond it, as it grows: on 50,000 points of a uniform cube the
tree took 0.14 s at D = 3, 1.3 s at D = 8, 7.4 s at D = 12 and 34 s at D = 20, against 4.2–4.8 s for the engine's
brute force throughout. Neither D nor n tells which wins, so :func:`search` measures it on a few hundred random
query rows (0.5% of them, at least 256): first the brute force on 64 of them, whose neighbours give an estimate of
the intrinsic dimension (past ``_TREE_MAX_ID`` no tree is built, nor scipy.spatial imported: about 1% of the brute
force's time is all such data pays); then the brute force on the rest and the tree, on a few rows in one thread and
then on the whole sample, stopped as soon as it can no longer win clearly. The tree runs only when its
extrapolated time is under ``_TREE_WIN`` of the brute force's. In a fresh process the first tree also pays for
importing scipy.spatial (about 0.25 s).

The answer is the engine's exact answer: the tree only proposes candidates. Each query takes its
``k + 1 + _TREE_MARGIN`` nearest by the tree (its own float64 arithmetic), their distances are recomputed with the
engine's exact kernel (:func:`estimators.knn.engine.exact_distances`, the one definition of a distance), and the k
best by (distance, index), self excluded by index, are kept. A point the tree did not list lies at least at the
tree's last listed distance ``b`` (in its arithmetic, which differs from the kernel's by a few units in the last
place); when the k-th kept distance is below ``b·(1 − 1e-12)`` no unlisted point can be as close, ties included, so
the row is exact. Rows that fail the test (exact duplicates crowding the list, ties at the boundary) are searched
again by the brute force.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from estimators.base import ProgressFn, no_progress

#: candidates beyond k (and self) that each query takes from the tree
_TREE_MARGIN = 4
#: the tree runs when its time, extrapolated from the sample, is under this share of the brute force's
_TREE_WIN = 0.6
#: the symmetric brute force's cost per query row, as a share of the sample's (query rows against all rows)
_SYMMETRIC = 0.6
#: rows of the reference below which the brute force is left alone (it takes a fraction of a second there)
_TREE_MIN_REF = 8192
#: query rows timed by both methods: this share of the queries, within [_SAMPLE_MIN, _SAMPLE_MAX]
_SAMPLE_SHARE = 0.005
_SAMPLE_MIN, _SAMPLE_MAX = 256, 2048
#: intrinsic dimension (estimated on the sample) above which no tree is tried: on uniform cubes of 50,000 points
#: the tree won 3x at 8 dimensions and lost 2x at 12
_TREE_MAX_ID = 10.0
#: sample rows whose neighbours estimate the intrinsic dimension (the gate)
_GATE_ROWS = 64
#: rows of the probe (one thread) that precedes the tree's measurement on the whole sample
_PROBE_ROWS = 16
#: query rows per tree task (tasks go to the threads as they free up: no thread waits for a busy core's share)
_TASK_ROWS = 1024
#: relative gap between the tree's last listed distance and the k-th exact one that certifies a row
_CERTIFY = 1e-12


def eligible(n: int, D: int, device: torch.device, method: str, min_dim: int) -> bool:
    """Whether :func:`search` is tried: the CPU, the automatic choice, a reference large enough for the brute force
    to take a while and fewer features than the engine's pruning needs (``min_dim``)."""
    return device.type == "cpu" and method == "auto" and n >= _TREE_MIN_REF and D < min_dim


def search(
    reference: torch.Tensor,
    k: int,
    qi: torch.Tensor,
    full: bool,
    *,
    threads: int,
    memory_budget_mb: int,
    stats: dict,
    progress: ProgressFn = no_progress,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The exact k nearest neighbours (distances float64, indices int64; self excluded by index) of the reference
    rows ``qi`` (``full``: every row, the engine's symmetric brute force being the alternative) through a k-d tree,
    or None when the sample says the brute force costs less. Records what it measured in ``stats["tree"]``."""
    from estimators.knn.engine import _in_threads, exact_distances, kneighbors

    n, D = reference.shape
    nq = int(qi.numel())
    g = torch.Generator().manual_seed(0)
    q = int(min(nq, max(_SAMPLE_MIN, min(_SAMPLE_MAX, round(nq * _SAMPLE_SHARE)))))
    sample = qi[torch.randperm(nq, generator=g)[:q]]
    # the gate: a k-d tree's cost grows about exponentially with the data's intrinsic dimension, estimated here
    # from the neighbours of the first _GATE_ROWS sample rows (Levina-Bickel, by brute force); past _TREE_MAX_ID it
    # cannot win and is not even built (nor scipy.spatial imported: a quarter of a second in a fresh process)
    first = min(q, _GATE_ROWS)
    t0 = time.perf_counter()
    near = kneighbors(reference, k, query_index=sample[:first], method="brute", memory_budget_mb=memory_budget_mb)
    t_brute = time.perf_counter() - t0
    dim = _sample_dimension(near.distances)
    stats["tree"] = {"sample_rows": first, "sample_dimension": round(dim, 2), "used": False}
    if not dim <= _TREE_MAX_ID:
        return None
    if q > first:  # the rest of the sample: the brute force's time
        t0 = time.perf_counter()
        kneighbors(reference, k, query_index=sample[first:], method="brute", memory_budget_mb=memory_budget_mb)
        t_brute += time.perf_counter() - t0
    # the symmetric brute force meets each pair once: a full self-query costs it less per query row than the
    # sample's rows cost (0.4-0.8 of it on cubes and Gaussians of 3-40 dimensions; taken as _SYMMETRIC)
    brute = t_brute / q * nq * (_SYMMETRIC if full else 1.0)
    stats["tree"].update(sample_rows=q, brute_s=round(brute, 3))
    from scipy.spatial import cKDTree

    X = np.ascontiguousarray(reference.numpy(), dtype=np.float64)
    kk = min(n, k + 1 + _TREE_MARGIN)
    t0 = time.perf_counter()
    tree = cKDTree(X, copy_data=False)
    build = time.perf_counter() - t0
    xs = X[sample.numpy()]
    # a probe, so that data beyond the tree's reach costs little more: a few rows in one thread, stopped once they
    # take longer than the brute force takes for them (per thread)
    probe = min(q, _PROBE_ROWS)
    t0 = time.perf_counter()
    for s in range(0, probe, 4):
        tree.query(xs[s : s + 4], k=kk)
        if time.perf_counter() - t0 > t_brute / q * probe * max(1, threads):
            stats["tree"].update(probe_rows=min(probe, s + 4), build_s=round(build, 4))
            return None
    # the sample in pieces over the threads, as the search would run; stopped once the tree cannot come in under
    # _TREE_WIN of the brute force
    budget = (_TREE_WIN * brute - build) * q / nq
    timed = [0]
    t0 = time.perf_counter()

    def piece(_slot: int, s: int) -> None:
        if time.perf_counter() - t0 <= budget:
            tree.query(xs[s : s + 64], k=kk)
            timed[0] += min(64, q - s)

    _in_threads(max(1, threads), range(0, q, 64), piece)
    estimate = build + (time.perf_counter() - t0) / max(1, timed[0]) * nq
    stats["tree"].update(tree_s=round(estimate, 3), used=estimate < _TREE_WIN * brute)
    if not stats["tree"]["used"]:
        return None

    out_d = torch.empty((nq, k), dtype=torch.float64)
    out_i = torch.empty((nq, k), dtype=torch.long)
    bad: list[torch.Tensor] = []
    tasks = list(range(0, nq, _TASK_ROWS))
    done = [0]

    def task(_slot: int, s: int) -> None:
        rows = qi[s : s + _TASK_ROWS]
        bound, cand = tree.query(X[rows.numpy()], k=kk)
        cand = torch.from_numpy(np.asarray(cand, dtype=np.int64).reshape(rows.numel(), kk))
        m = rows.numel()
        d = exact_distances(reference, rows.repeat_interleave(kk), reference, cand.reshape(-1)).view(m, kk)
        d.masked_fill_(cand == rows.unsqueeze(1), math.inf)  # self, by index
        # the k best by (distance, index): a stable sort by distance of the candidates in index order
        cand, order = torch.sort(cand, dim=1)
        d = torch.gather(d, 1, order)
        d, order = torch.sort(d, dim=1, stable=True)
        cand = torch.gather(cand, 1, order)
        out_d[s : s + m] = d[:, :k]
        out_i[s : s + m] = cand[:, :k]
        last = torch.from_numpy(np.asarray(bound, dtype=np.float64).reshape(m, kk)[:, -1].copy())
        ok = d[:, k - 1] < last * (1 - _CERTIFY) if kk < n else torch.isfinite(d[:, k - 1])
        if not bool(ok.all()):
            bad.append(torch.nonzero(~ok).flatten() + s)
        done[0] += m
        if _slot == 0:  # the caller's thread (a progress callback may talk to a database)
            progress(0.95 * done[0] / nq, "knn")

    _in_threads(max(1, threads), tasks, task)
    stats["tree"]["recomputed_rows"] = 0
    if bad:  # rows the candidates do not certify: the brute force
        pos = torch.cat(bad)
        again = kneighbors(reference, k, query_index=qi[pos], method="brute", memory_budget_mb=memory_budget_mb)
        out_d[pos], out_i[pos] = again.distances, again.indices
        stats["tree"]["recomputed_rows"] = int(pos.numel())
    progress(1.0, "knn")
    return out_d, out_i


def _sample_dimension(d: torch.Tensor) -> float:
    """The Levina-Bickel estimate of the intrinsic dimension from rows of ascending neighbour distances (the
    inverse of the mean over rows of ``mean_j log(d_k / d_j)``, j < k); rows with a zero distance (duplicates) are
    left out. +inf when nothing is left (no evidence: no tree)."""
    d = d[d[:, 0] > 0]
    if d.shape[0] == 0 or d.shape[1] < 2:
        return math.inf
    logs = torch.log(d[:, -1:] / d[:, :-1]).mean(1)
    mean = float(logs.mean())
    return 1.0 / mean if mean > 0 else math.inf
