"""δ, the minimum distance between classes, for the inductive-bias closed form (docs/methods.md §3.1).

Three estimators, selected by the ``delta_method`` param of ``inductive_bias``:

* ``exact`` (default): the exact minimum over all N² differently labelled pairs
  (:func:`estimators.knn.pairs.interclass_min`); δ ≡ 1/K_F of ``label_sharpness`` (docs/methods.md §3.1 note).
* ``sample`` (the authors' ``sample_delta``): a seeded random subset of ``sample_size`` points (30,000), exact
  pairwise distances, minimum over differently labelled pairs whose distance is at least ``min_distance``
  (the authors ignore distances < 1, a guard against near-duplicates in [0,1] pixel space).
* ``evt`` (the authors' ``evt_delta``): ``n_pairs`` (4,000,000) random differently labelled pairs, s = 1/dist,
  the top k = 2000 order statistics s_(1) ≥ … ≥ s_(k) above s_(k+1); M1 = mean ln(s_i/s_(k+1)), M2 = mean ln²,
  extreme-value index γ = M1 + 1 − ½/(1 − M1²/M2) (moment estimator); with a = (k/S)·N²(1 − 1/C),
  δ = 1/(s_(k+1)·(1 + M1·(a^γ − 1)/γ)), capped by the sampled minimum distance.

>>> import torch
>>> X = torch.tensor([[0.0], [1.0], [3.0]]); y = torch.tensor([0, 0, 1])
>>> sample_delta(X, y, sample_size=3, min_distance=0.0, seed=0)
2.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from estimators.base import EstimatorError


def sample_delta(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    sample_size: int = 30000,
    min_distance: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    block: int = 2048,
) -> float:
    """The authors' subsample δ: exact minimum distance ≥ ``min_distance`` between differently labelled points
    of a seeded random subset (float64 Gram-matrix candidates, re-measured as ‖x_i − x_j‖). inf if none."""
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(sample_size, n), replace=False))
    S = X[torch.from_numpy(idx)].to(device, torch.float64)
    ys = y[torch.from_numpy(idx)].to(device)
    sq = (S * S).sum(dim=1)
    tol = 4.0 * (S.shape[1] + 4) * 2.0**-53 * 2.0 * float(sq.max())
    g2 = min_distance * min_distance
    best = math.inf
    for s in range(0, S.shape[0], block):
        d2 = sq[s : s + block, None] + sq[None, s:] - 2.0 * (S[s : s + block] @ S[s:].T)
        ok = (ys[s : s + block, None] != ys[None, s:]) & (d2 >= g2 - tol)
        d2 = torch.where(ok, d2, torch.full_like(d2, math.inf))
        lo = float(d2.min())
        if math.isinf(lo) or lo - tol > best * best:
            continue
        cand = torch.nonzero(d2 <= lo + tol)
        a, b = cand[:, 0] + s, cand[:, 1] + s
        exact = torch.linalg.vector_norm(S[a] - S[b], dim=1)
        exact = exact[exact >= min_distance]
        if exact.numel():
            best = min(best, float(exact.min()))
    return best


def evt_delta(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    n_pairs: int = 4_000_000,
    k: int = 2000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch: int = 32768,
) -> tuple[float, dict]:
    """The authors' extreme-value extrapolation of δ (see the module docstring). Returns (δ, details)."""
    n = X.shape[0]
    y_np = y.cpu().numpy()
    C = np.unique(y_np).size
    if C < 2:
        raise EstimatorError("delta_method='evt' needs at least 2 classes")
    if k < 2 or k >= n_pairs:
        raise EstimatorError(f"evt: need 2 <= k < n_pairs, got k={k}, n_pairs={n_pairs}")
    rng = np.random.default_rng(seed)
    Xd = X.to(device)
    s_all = []
    got = 0
    while got < n_pairs:
        want = min(batch, n_pairs - got)
        i = rng.integers(0, n, size=2 * want + 64)
        j = rng.integers(0, n, size=2 * want + 64)
        keep = y_np[i] != y_np[j]
        i, j = i[keep][:want], j[keep][:want]
        ti, tj = torch.from_numpy(i).to(device), torch.from_numpy(j).to(device)
        # float32 differences (each coordinate exact to 1 ulp), accumulated in float64
        dist = torch.linalg.vector_norm(Xd[ti] - Xd[tj], dim=1, dtype=torch.float64)
        s_all.append((1.0 / dist).cpu().numpy())  # a zero distance gives s = inf, δ = 0 below
        got += i.size
    s = np.concatenate(s_all)
    top = np.sort(np.partition(s, s.size - k - 1)[s.size - k - 1 :])  # s_(k+1), then the k largest ascending
    order_k = top[0]
    extreme = top[1:]
    sampled_min = 1.0 / extreme[-1]
    info: dict[str, Any] = {"n_pairs": int(s.size), "k": int(k), "sampled_min_distance": float(sampled_min)}
    if not np.isfinite(extreme[-1]):
        info.update({"gamma": None, "extrapolated": 0.0})
        return 0.0, info
    logs = np.log(extreme) - np.log(order_k)
    M1 = float(np.mean(logs))
    M2 = float(np.mean(logs * logs))
    gamma = M1 + 1.0 - 0.5 / (1.0 - M1 * M1 / M2)
    pairs = n * n * (1.0 - 1.0 / C)
    a = k / s.size * pairs
    growth = math.log(a) if abs(gamma) < 1e-12 else math.expm1(gamma * math.log(a)) / gamma
    extrapolated = 1.0 / (order_k * (1.0 + M1 * growth))
    info.update({"gamma": gamma, "M1": M1, "M2": M2, "a": a, "extrapolated": extrapolated})
    return float(min(extrapolated, sampled_min)), info
