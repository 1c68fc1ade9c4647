"""Exact minimum distances between differently labelled points (docs/methods.md §2, §3.1 δ, §7).

K_F = 1/δ (label sharpness) and the δ of the inductive-bias closed form both need

    δ = min_{y_j ≠ y_k} ‖x_j − x_k‖₂

over ALL N² pairs, plus, for the report, the minimum for every pair of classes (a C×C matrix) and the
``top_k`` closest differently labelled pairs. :func:`interclass_min` computes them exactly (float64 distances
computed as ‖x_j − x_k‖, never through ‖a‖² + ‖b‖² − 2a·b) without an N²·D brute force:

1. **Lower-bound embedding**: the kNN engine's (:func:`estimators.knn.lower_bound_embedding`, docs/methods.md §7):
   r = ``prune_dims`` orthonormal principal directions P and the residual norm,
   a_i = [Pᵀ(x_i − μ), ρ_i] ∈ R^{r+1} with

       ‖a_j − a_k‖² = ‖Pᵀ(x_j − x_k)‖² + (ρ_j − ρ_k)² ≤ ‖x_j − x_k‖²

   (Pythagoras and the reverse triangle inequality on the orthogonal complement), stored in float32 together
   with the engine's certified error constants (rounding of a, of P's orthonormality, of the float32 GEMM).
2. **Candidates**: for every class pair (a, b), each point of the larger class gets its nearest point of the
   other class in the embedding (an N²·r search, float32; only a heuristic, nothing depends on its accuracy).
   Their exact distances give an upper bound U_ab on the class-pair minimum and, globally, U_top = the
   ``top_k``-th smallest candidate distance.
3. **Survivors**: every pair of points of classes (a, b) whose computed embedded squared distance is below the
   engine's certified threshold for T_ab = max(U_ab, U_top) (``LowerBoundEmbedding.threshold``: every pair
   with float64 distance ≤ T_ab is below it) is re-measured with the engine's exact float64 distance
   (:func:`estimators.knn.exact_distances`), so the class-pair minima and the global top-k come out exact.

On CPU the two searches in the embedding use faiss (``IndexFlatL2.search`` / ``range_search``, fused kernels)
when it is installed, as a kept library that beats a hand-written loop for this step; on CUDA (or with
``backend="torch"``) the engine's augmented GEMM (``LowerBoundEmbedding.sq_dists``) does the same. Full
Fashion-MNIST (60000×784): about 7 s on 2 CPU cores (bench/results_label_sharpness.md) vs 125 s for a
float64 brute force.

Example
-------
>>> import torch
>>> X = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 1.0]])
>>> r = interclass_min(X, torch.tensor([0, 1, 0]))
>>> r.delta, r.top_pairs[0]
(4.0, (0, 1, 4.0))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from estimators.base import EstimatorError, ProgressFn, no_progress, scaled_progress
from estimators.knn.duplicates import exact_duplicates
from estimators.knn.engine import exact_distances, lower_bound_embedding

Backend = Literal["auto", "faiss", "torch"]


@dataclass
class InterclassResult:
    """Exact inter-class minimum distances.

    ``labels``: the distinct labels (ascending), C of them. ``class_min``: (C, C) float64, symmetric, NaN on the
    diagonal, the minimum distance between a point of class a and one of class b. ``class_argmin``: (C, C, 2) int64
    rows of X realising it (row of class a first). ``top_pairs``: up to ``top_k`` (i, j, distance) ascending,
    i < j, over all differently labelled pairs. ``delta``: the global minimum (inf with fewer than 2 classes).
    """

    delta: float
    labels: np.ndarray
    class_min: np.ndarray
    class_argmin: np.ndarray
    top_pairs: list[tuple[int, int, float]]
    stats: dict = field(default_factory=dict)


def _faiss():
    try:
        import faiss  # noqa: PLC0415 - optional accelerator

        return faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a declared dependency
        return None


def pick_backend(backend: Backend, device: torch.device) -> str:
    if backend == "auto":
        return "faiss" if device.type == "cpu" and _faiss() is not None else "torch"
    if backend == "faiss" and _faiss() is None:
        raise EstimatorError("backend 'faiss' requested but faiss is not installed; use backend='torch'")
    return backend


# --- the two searches in the embedding: nearest neighbour and fixed-radius, per class pair -------------------


def _faiss_index(Ar: np.ndarray):
    faiss = _faiss()
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))  # follow the process's torch thread setting
    index = faiss.IndexFlatL2(Ar.shape[1])
    index.add(Ar)
    return index


def _knn1_faiss(Aq: np.ndarray, Ar: np.ndarray) -> np.ndarray:
    _, idx = _faiss_index(Ar).search(Aq, 1)
    return idx[:, 0].astype(np.int64)


def _range_faiss(Aq: np.ndarray, Ar: np.ndarray, radius2: float, rows: int):
    index = _faiss_index(Ar)
    qs, rs = [], []
    for s in range(0, Aq.shape[0], rows):
        lims, _, idx = index.range_search(Aq[s : s + rows], float(radius2))
        counts = np.diff(lims).astype(np.int64)
        qs.append(np.repeat(np.arange(s, s + counts.size, dtype=np.int64), counts))
        rs.append(idx.astype(np.int64))
    return np.concatenate(qs), np.concatenate(rs)


def _knn1_torch(emb, qi: torch.Tensor, ri: torch.Tensor, rows: int) -> torch.Tensor:
    ref = emb.reference(ri)
    out = torch.empty(qi.numel(), dtype=torch.long, device=qi.device)
    for s in range(0, qi.numel(), rows):
        out[s : s + rows] = emb.sq_dists(qi[s : s + rows], ref).argmin(dim=1)
    return out


def _range_torch(emb, qi: torch.Tensor, ri: torch.Tensor, radius2: float, rows: int):
    ref = emb.reference(ri)
    qs, rs = [], []
    for s in range(0, qi.numel(), rows):
        hit = torch.nonzero(emb.sq_dists(qi[s : s + rows], ref) <= radius2)
        qs.append(hit[:, 0] + s)
        rs.append(hit[:, 1])
    return torch.cat(qs), torch.cat(rs)


def interclass_min(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    top_k: int = 10,
    prune_dims: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    backend: Backend = "auto",
    memory_budget_mb: int = 1024,
    progress: ProgressFn = no_progress,
) -> InterclassResult:
    """Exact minimum distances between differently labelled rows of X (see the module docstring).

    ``X``: (N, D) real tensor; ``y``: (N,) integer labels. Exact duplicates need no special handling for
    correctness, but a large group of conflicting duplicates makes many zero-distance survivors: callers
    should collapse duplicate (row, label) combinations first (:mod:`estimators.label_sharpness` does).

    >>> X = torch.tensor([[0.0], [1.0], [3.0], [3.5]]); y = torch.tensor([0, 0, 1, 2])
    >>> r = interclass_min(X, y)
    >>> r.class_min[0, 1], r.class_min[1, 2], [p[:2] for p in r.top_pairs]
    (2.0, 0.5, [(2, 3), (1, 2), (1, 3), (0, 2), (0, 3)])
    """
    t_start = time.perf_counter()
    dev = torch.device(device)
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
        raise EstimatorError(f"X must be (N, D) and y (N,) with the same N; got {tuple(X.shape)} and {tuple(y.shape)}")
    if top_k < 1:
        raise EstimatorError(f"top_k must be >= 1, got {top_k}")
    n, d = X.shape
    y_np = y.detach().cpu().numpy().astype(np.int64, copy=False)
    labels, y_idx = np.unique(y_np, return_inverse=True)
    C = labels.size
    class_min = np.full((C, C), math.inf)
    np.fill_diagonal(class_min, math.nan)
    class_argmin = np.full((C, C, 2), -1, dtype=np.int64)
    stats: dict = {"n": int(n), "d": int(d), "n_classes": int(C)}
    if C < 2:
        stats["seconds"] = time.perf_counter() - t_start
        return InterclassResult(math.inf, labels, class_min, class_argmin, [], stats)

    be = pick_backend(backend, dev)
    stats["backend"] = be
    Xd = X.detach().to(dev)
    if Xd.dtype not in (torch.float32, torch.float64):
        Xd = Xd.to(torch.float64)
    members = [torch.from_numpy(np.flatnonzero(y_idx == c)).to(dev) for c in range(C)]
    progress(0.0, "embedding")
    emb = lower_bound_embedding(Xd, prune_dims, seed=seed, device=dev)
    stats.update({"prune_dims": emb.rank, "projection": "principal directions + residual norm (estimators.knn)"})
    cnorm = emb.cnorm
    if be == "faiss" and emb.w.dtype != torch.float32:  # float64 GEMM frame (lowered matmul precision)
        be = stats["backend"] = "torch"
    A_np: Any = emb.w.cpu().numpy() if be == "faiss" else None  # only read on the faiss path
    pair_batch = max(1, int(memory_budget_mb * 2**20 // (8 * d * 3)))
    t_emb = time.perf_counter()

    # class pairs; the larger class queries the smaller one (more candidates for the same work)
    pairs = []
    for a in range(C):
        for b in range(a + 1, C):
            qa, rb = (a, b) if members[a].numel() >= members[b].numel() else (b, a)
            pairs.append((a, b, qa, rb))

    def block_rows(n_ref: int) -> int:
        return max(1, int(memory_budget_mb * 2**20 // (4 * max(n_ref, 1) * 4)))

    # phase 1: nearest other-class point in the embedding, exact distance of each candidate
    U = {}
    cand_d = []
    n_cand = 0
    for p, (a, b, qa, rb) in enumerate(pairs):
        qi, ri = members[qa], members[rb]
        if be == "faiss":
            nn = torch.from_numpy(_knn1_faiss(A_np[qi.cpu().numpy()], A_np[ri.cpu().numpy()])).to(dev)
        else:
            nn = _knn1_torch(emb, qi, ri, block_rows(ri.numel()))
        dist = exact_distances(Xd, qi, Xd, ri[nn], chunk=pair_batch)
        U[(a, b)] = float(dist.min())
        cand_d.append(torch.topk(dist, min(top_k, dist.numel()), largest=False).values)
        n_cand += dist.numel()
        progress(0.45 * (p + 1) / len(pairs), "candidates")
    pool = torch.cat(cand_d)
    u_top = float(torch.topk(pool, top_k, largest=False).values[-1]) if pool.numel() >= top_k else math.inf
    t_cand = time.perf_counter()

    # phase 2: every pair whose lower bound is below its class pair's threshold, measured exactly
    best_d = torch.empty(0, dtype=torch.float64, device=dev)
    best_i = torch.empty(0, dtype=torch.long, device=dev)
    best_j = torch.empty(0, dtype=torch.long, device=dev)
    n_surv = 0
    for p, (a, b, qa, rb) in enumerate(pairs):
        qi, ri = members[qa], members[rb]
        T = max(U[(a, b)], u_top)
        if math.isinf(T):
            gi = qi.repeat_interleave(ri.numel())
            gj = ri.repeat(qi.numel())
        else:
            radius2 = emb.threshold(T, float(cnorm[qi].max()) + float(cnorm[ri].max()))
            if be == "faiss":
                ql, rl = _range_faiss(A_np[qi.cpu().numpy()], A_np[ri.cpu().numpy()], radius2, block_rows(ri.numel()))
                ql, rl = torch.from_numpy(ql).to(dev), torch.from_numpy(rl).to(dev)
            else:
                ql, rl = _range_torch(emb, qi, ri, radius2, block_rows(ri.numel()))
            gi, gj = qi[ql], ri[rl]
        dist = exact_distances(Xd, gi, Xd, gj, chunk=pair_batch)
        n_surv += dist.numel()
        if dist.numel() == 0:  # impossible: the U_ab pair survives; kept as a loud internal check
            raise RuntimeError(f"internal error: no survivor for classes {labels[a]} and {labels[b]}")
        k = int(torch.argmin(dist))
        i_a, j_b = (int(gi[k]), int(gj[k])) if qa == a else (int(gj[k]), int(gi[k]))
        class_min[a, b] = class_min[b, a] = float(dist[k])
        class_argmin[a, b] = (i_a, j_b)
        class_argmin[b, a] = (j_b, i_a)
        # merge into the running global top-k
        keep = min(top_k, dist.numel())
        sel = torch.topk(dist, keep, largest=False).indices
        best_d = torch.cat([best_d, dist[sel]])
        best_i = torch.cat([best_i, torch.minimum(gi[sel], gj[sel])])
        best_j = torch.cat([best_j, torch.maximum(gi[sel], gj[sel])])
        if best_d.numel() > top_k:
            order = torch.argsort(best_d, stable=True)[:top_k]
            best_d, best_i, best_j = best_d[order], best_i[order], best_j[order]
        progress(0.45 + 0.55 * (p + 1) / len(pairs), "exact survivors")
    order = np.lexsort((best_j.cpu().numpy(), best_i.cpu().numpy(), best_d.cpu().numpy()))
    top = [(int(best_i[o]), int(best_j[o]), float(best_d[o])) for o in order]
    t_end = time.perf_counter()
    stats.update(
        {
            "class_pairs": len(pairs),
            "candidate_pairs": int(n_cand),
            "survivor_pairs": int(n_surv),
            "all_interclass_pairs": int((n * n - int((np.bincount(y_idx).astype(np.int64) ** 2).sum())) // 2),
            "seconds_embedding": t_emb - t_start,
            "seconds_candidates": t_cand - t_emb,
            "seconds_survivors": t_end - t_cand,
            "seconds": t_end - t_start,
        }
    )
    delta = float(np.nanmin(class_min))
    return InterclassResult(delta, labels, class_min, class_argmin, top, stats)


def _duplicates(X: torch.Tensor, y: np.ndarray, max_listed: int):
    """Distinct (row, label) representatives and the conflicting-duplicate summary (docs/methods.md §0, §2)."""
    dup = exact_duplicates(X)
    _, y_idx = np.unique(y, return_inverse=True)
    key = dup.inverse.astype(np.int64) * (int(y_idx.max()) + 1) + y_idx
    _, first = np.unique(key, return_index=True)
    reps = np.sort(first)
    groups = []
    n_pairs = 0
    for g in dup.groups:
        labs, counts = np.unique(y[g], return_counts=True)
        if labs.size > 1:
            n_pairs += (len(g) ** 2 - int((counts.astype(np.int64) ** 2).sum())) // 2
            groups.append(g)
    summary = {
        "groups": len(groups),
        "pairs": int(n_pairs),
        "listed": [
            {"indices": [int(i) for i in g[:50]], "labels": sorted({int(v) for v in y[g]}), "size": len(g)}
            for g in groups[:max_listed]
        ],
    }
    return reps, dup.n_removed, summary


def exact_interclass(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    top_k: int = 10,
    prune_dims: int = 64,
    device=torch.device("cpu"),
    memory_budget_mb: int = 1024,
    progress: ProgressFn = no_progress,
):
    """Exact inter-class minima of (X, y) after collapsing duplicate (row, label) combinations.

    Returns (InterclassResult on the representatives, representative row indices into X, number of exact
    duplicate rows, conflicting-duplicate summary). Shared with ``inductive_bias`` (δ, docs/methods.md §3.1).
    """
    progress(0.0, "duplicates")
    reps, n_dup_rows, conflicts = _duplicates(X, y.numpy(), top_k)
    res = interclass_min(
        X[torch.from_numpy(reps)],
        y[torch.from_numpy(reps)],
        top_k=top_k,
        prune_dims=prune_dims,
        device=device,
        memory_budget_mb=memory_budget_mb,
        progress=scaled_progress(progress, 0.1, 1.0),
    )
    return res, reps, n_dup_rows, conflicts
