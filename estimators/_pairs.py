"""Exact minimum distances between differently labelled points (METHODS.md §2, §3.1 δ, §7).

K_F = 1/δ (label sharpness) and the δ of the inductive-bias closed form both need

    δ = min_{y_j ≠ y_k} ‖x_j − x_k‖₂

over ALL N² pairs, plus, for the report, the minimum for every pair of classes (a C×C matrix) and the
``top_k`` closest differently labelled pairs. :func:`interclass_min` computes them exactly (float64 distances
computed as ‖x_j − x_k‖, never through ‖a‖² + ‖b‖² − 2a·b) without an N²·D brute force:

1. **Lower-bound embedding** (METHODS §7). Centre X, take r orthonormal principal directions P (r =
   ``prune_dims``) and the residual norm e_i = ‖x_i − P Pᵀ x_i‖. With a_i = [Pᵀx_i, e_i] ∈ R^{r+1},

       ‖a_j − a_k‖² = ‖Pᵀ(x_j − x_k)‖² + (e_j − e_k)² ≤ ‖x_j − x_k‖²

   (Pythagoras and the reverse triangle inequality on the orthogonal complement).
2. **Candidates**: for every class pair (a, b), each point of the larger class gets its nearest point of the
   other class in the (r+1)-dimensional embedding (an N²·r search, float32). Their exact distances give an
   upper bound U_ab on the class-pair minimum and, globally, U_top = the ``top_k``-th smallest candidate distance.
3. **Survivors**: every pair of classes (a, b) whose embedded distance is below T_ab = max(U_ab, U_top), widened
   by a rigorous bound on the float32 rounding error, is re-measured exactly in float64. Every pair with true
   distance ≤ T_ab survives (its lower bound is ≤ its distance), so the class-pair minima and the global top-k
   come out exact.

On CPU the two searches use faiss (``IndexFlatL2.search`` / ``range_search``, fused GEMM kernels) when it is
installed; on CUDA (or with ``backend="torch"``) blocked torch GEMMs do the same. Full Fashion-MNIST
(60000×784): about 10 s on 2 CPU cores (bench/results_label_sharpness.md) vs 95 s for a float64 brute force.

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
from typing import Literal

import numpy as np
import torch

from estimators.base import EstimatorError, ProgressFn, no_progress

Backend = Literal["auto", "faiss", "torch"]

_U32 = 2.0**-24  # unit roundoff of float32


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


def lower_bound_embedding(
    X64: torch.Tensor, r: int, *, seed: int = 0, sample_rows: int = 8192, memory_budget_mb: int = 1024
) -> tuple[torch.Tensor, dict]:
    """A = [Pᵀ(x − μ), ‖(I − PPᵀ)(x − μ)‖] in float32, whose Euclidean distances bound ‖x_j − x_k‖ from below.

    P: r orthonormal directions (randomised SVD of a seeded row sample, re-orthonormalised in float64).
    When D ≤ r the centred data itself is returned (the bound is then the distance up to rounding).
    """
    n, d = X64.shape
    mu = X64.mean(dim=0)
    if d <= r:
        return (X64 - mu).to(torch.float32), {"prune_dims": int(d), "projection": "none (D <= prune_dims)"}
    g = torch.Generator(device="cpu").manual_seed(seed)
    rows = torch.randperm(n, generator=g)[: min(n, sample_rows)].to(X64.device)
    S = X64[rows] - mu
    torch.manual_seed(seed)  # svd_lowrank draws its random test matrix from the global generator
    q = min(r, min(S.shape))
    _, _, V = torch.svd_lowrank(S, q=q, niter=3)
    P, _ = torch.linalg.qr(V)  # orthonormal to float64 precision, (d, q)
    out = torch.empty(n, q + 1, dtype=torch.float32, device=X64.device)
    chunk = max(1, int(memory_budget_mb * 2**20 // (8 * (2 * d + q) * 2)))
    for s in range(0, n, chunk):
        xc = X64[s : s + chunk] - mu
        z = xc @ P
        e = torch.linalg.vector_norm(xc - z @ P.T, dim=1)
        out[s : s + chunk, :q] = z.to(torch.float32)
        out[s : s + chunk, q] = e.to(torch.float32)
    return out, {"prune_dims": int(q), "projection": "principal directions + residual norm"}


def _margin_coeff(width: int) -> float:
    """c with |computed d² − exact lower-bound d²| ≤ c·(‖a‖² + ‖b‖²) for float32 ‖a‖²+‖b‖²−2a·b over ``width``
    coordinates, including the rounding of the embedding to float32 (a generous multiple of the standard
    γ_w = w·u/(1 − w·u) dot-product bound)."""
    return 8.0 * (width + 4) * _U32


def _exact_dist(X64: torch.Tensor, i: torch.Tensor, j: torch.Tensor, batch: int) -> torch.Tensor:
    """‖X64[i] − X64[j]‖ in float64, by differences, in batches of ``batch`` pairs."""
    out = torch.empty(i.numel(), dtype=torch.float64, device=X64.device)
    for s in range(0, i.numel(), batch):
        out[s : s + batch] = torch.linalg.vector_norm(X64[i[s : s + batch]] - X64[j[s : s + batch]], dim=1)
    return out


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


def _sqd_block(aq: torch.Tensor, Ar: torch.Tensor, nr: torch.Tensor) -> torch.Tensor:
    nq = (aq * aq).sum(dim=1, keepdim=True)
    return torch.addmm(nr.unsqueeze(0) + nq, aq, Ar.T, beta=1.0, alpha=-2.0)


def _knn1_torch(Aq: torch.Tensor, Ar: torch.Tensor, rows: int) -> torch.Tensor:
    nr = (Ar * Ar).sum(dim=1)
    out = torch.empty(Aq.shape[0], dtype=torch.long, device=Aq.device)
    for s in range(0, Aq.shape[0], rows):
        out[s : s + rows] = _sqd_block(Aq[s : s + rows], Ar, nr).argmin(dim=1)
    return out


def _range_torch(Aq: torch.Tensor, Ar: torch.Tensor, radius2: float, rows: int):
    nr = (Ar * Ar).sum(dim=1)
    qs, rs = [], []
    for s in range(0, Aq.shape[0], rows):
        hit = torch.nonzero(_sqd_block(Aq[s : s + rows], Ar, nr) < radius2)
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
    X64 = X.detach().to(dev, torch.float64)
    members = [torch.from_numpy(np.flatnonzero(y_idx == c)).to(dev) for c in range(C)]
    progress(0.0, "embedding")
    A, emb = lower_bound_embedding(X64, prune_dims, seed=seed, memory_budget_mb=memory_budget_mb)
    stats.update(emb)
    width = A.shape[1]
    c_err = _margin_coeff(width)
    sq_norm = (A.double() ** 2).sum(dim=1)
    A_np = A.cpu().numpy() if be == "faiss" else None
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
            nn = _knn1_torch(A[qi], A[ri], block_rows(ri.numel()))
        dist = _exact_dist(X64, qi, ri[nn], pair_batch)
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
            margin = c_err * (float(sq_norm[qi].max()) + float(sq_norm[ri].max()))
            radius2 = T * T * (1.0 + 1e-12) + margin
            if be == "faiss":
                ql, rl = _range_faiss(A_np[qi.cpu().numpy()], A_np[ri.cpu().numpy()], radius2, block_rows(ri.numel()))
                ql, rl = torch.from_numpy(ql).to(dev), torch.from_numpy(rl).to(dev)
            else:
                ql, rl = _range_torch(A[qi], A[ri], radius2, block_rows(ri.numel()))
            gi, gj = qi[ql], ri[rl]
        dist = _exact_dist(X64, gi, gj, pair_batch)
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
