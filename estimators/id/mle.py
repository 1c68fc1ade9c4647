"""Levina–Bickel maximum-likelihood intrinsic dimension with MacKay–Ghahramani pooling (docs/methods.md §1.1).

With T_j(x) the distance from x to its j-th nearest neighbour (x itself excluded), the per-point inverse
estimate is

    u_k(x) = (1/c_k) · Σ_{j=1}^{k} ln(T_k(x) / T_j(x)),     c_k = k − 1 (Levina–Bickel, skdim) or k − 2 (Pope/Konz),

and the pooled estimate over the points x_1..x_n is

    "mg"     (MacKay–Ghahramani, default):  m̂_k = 1 / mean_i u_k(x_i)      (harmonic mean of the 1/u)
    "mean"   (Levina–Bickel 2005):          m̂_k = mean_i 1/u_k(x_i)
    "median":                               m̂_k = median_i 1/u_k(x_i)

The defaults (k=20, c_k = k−1, "mg") reproduce ``skdim.id.MLE().fit(X).dimension_`` exactly. With
``k1``/``k2`` the estimate is Levina–Bickel's average (1/(k2−k1+1)) Σ_{k=k1}^{k2} m̂_k. Pope/Konz's value is
exactly (k−2)/(k−1) times the skdim value on the same neighbours (docs/methods.md §1.1, exact identity).

Guards (docs/methods.md §0, §1.1): exact duplicate rows are removed before the neighbour search and counted; points
whose k distances are all equal (u_k = 0, m = ∞, lattice or quantised data) are dropped at that k and
counted, with a warning. Points are never turned into 0, inf or NaN silently.

Example
-------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> X = torch.randn(1000, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 40, generator=g, dtype=torch.float64)
>>> r = mle_id(X)                    # skdim.id.MLE() on the same data gives the same number
>>> 4.3 < r.value < 5.3
True
>>> [row["k"] for row in r.details["per_k"]][:3]
[3, 4, 5]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from estimators.base import (  # parameter bounds
    MAX_MEMORY_BUDGET_MB,
    MAX_NEIGHBOURS,
    MAX_SEED,
    MAX_SUBSAMPLE,
    EstimatorError,
    Params,
    ProgressFn,
    Result,
    no_progress,
    scaled_progress,
)
from estimators.id._common import dropped_warning, prepare, quantiles, to_numpy64, too_few_error
from estimators.knn import release_freed_memory
from estimators.registry import register

VERSION = "1.0.0"
#: smallest k of the ID-vs-k curve (k=2 divides by zero with the k−2 normaliser, docs/methods.md §1.1)
K_MIN = 3
#: fewest points a pooled estimate may rest on
MIN_USED = 2

Normalizer = Literal["k-1", "k-2"]
Pooling = Literal["mg", "mean", "median"]


def _check_args(k: int, normalizer: str, pooling: str, k1: int | None, k2: int | None, anchors, seed: int) -> None:
    """Validate the arguments shared by :class:`MLEParams` and :func:`mle_id` (raises ValueError)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < K_MIN:
        raise ValueError(f"k must be an integer >= {K_MIN} (got {k!r}); the default is 20")
    if normalizer not in ("k-1", "k-2"):
        raise ValueError(f"normalizer must be 'k-1' (skdim, Levina–Bickel) or 'k-2' (Pope/Konz), got {normalizer!r}")
    if pooling not in ("mg", "mean", "median"):
        raise ValueError(f"pooling must be 'mg' (MacKay–Ghahramani), 'mean' or 'median', got {pooling!r}")
    if (k1 is None) != (k2 is None):
        raise ValueError("give both k1 and k2 (Levina–Bickel averaging over k = k1..k2), or neither")
    if k1 is not None:
        for name, v in (("k1", k1), ("k2", k2)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < K_MIN:
                raise ValueError(f"{name} must be an integer >= {K_MIN} (got {v!r}); Levina–Bickel use k1=10, k2=20")
        if k2 is not None and k1 > k2:
            raise ValueError(f"k1={k1} must not exceed k2={k2}")
    if anchors is not None:
        if isinstance(anchors, bool) or not isinstance(anchors, (int, float, np.integer, np.floating)):
            raise ValueError(f"anchors must be a count (int >= 1), a fraction in (0, 1], or None; got {anchors!r}")
        if isinstance(anchors, (int, np.integer)):
            if anchors < 1:
                raise ValueError(f"anchors as a count must be >= 1, got {anchors}")
        elif not (0.0 < float(anchors) <= 1.0):
            raise ValueError(f"anchors as a fraction must lie in (0, 1], got {anchors}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")


class MLEParams(Params):
    """Params of the ``mle`` estimator (defaults = ``skdim.id.MLE()``, docs/methods.md §1.1)."""

    k: int = Field(20, le=MAX_NEIGHBOURS, description="neighbours per point (skdim default 20)")
    normalizer: Normalizer = Field("k-1", description="'k-1' (skdim, Levina–Bickel) or 'k-2' (Pope/Konz)")
    pooling: Pooling = Field("mg", description="'mg' = MacKay–Ghahramani (1/mean of inverses), 'mean', 'median'")
    k1: int | None = Field(
        None, le=MAX_NEIGHBOURS, description="with k2: average the estimate over k = k1..k2 (Levina–Bickel)"
    )
    k2: int | None = Field(
        None, le=MAX_NEIGHBOURS, description="with k1: average the estimate over k = k1..k2 (Levina–Bickel)"
    )
    anchors: int | float | None = Field(
        None,
        le=MAX_SUBSAMPLE,
        description="query only a seeded subset against all points: a count (int) or a fraction (float)",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the anchor subsample")
    memory_budget_mb: int = Field(
        1024, ge=16, le=MAX_MEMORY_BUDGET_MB, description="memory the neighbour search may use"
    )

    @model_validator(mode="after")
    def _cross_check(self) -> MLEParams:
        _check_args(self.k, self.normalizer, self.pooling, self.k1, self.k2, self.anchors, self.seed)
        return self


def _log_ratio_sums(D: np.ndarray) -> np.ndarray:
    """``S[:, k - 1] = sum_{j <= k} log(T_k / T_j)`` for every k at once, from ascending neighbour distances ``D``
    (Q, K): with ``L = log(D / D[:, K-1])`` (every log-ratio against the last column, so no large logs cancel),
    ``S_k = k·L_k − (L_1 + … + L_k)``. One log per entry instead of one per entry and per k (the ID-against-k curve
    took 0.17 s at 50,000 points, as long as their whole k-d tree search); it agrees with the direct sum to a few
    units in the last place. Rows with a zero distance give NaN or infinities (dropped by the caller)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.log(D / D[:, -1:])
    C = np.cumsum(L, axis=1)
    k = np.arange(1, D.shape[1] + 1, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return L * k - C


def _pooled_at_k(D: np.ndarray, S: np.ndarray, k: int, normalizer: str, pooling: str):
    """Pooled MLE at ``k`` from ascending neighbour distances ``D`` (Q, ≥k) and their log-ratio sums ``S``
    (:func:`_log_ratio_sums`).

    Returns (value or None, pointwise estimates 1/u of the kept points, ties dropped, zero-distance dropped).
    """
    c = k - 1 if normalizer == "k-1" else k - 2
    Sk = S[:, k - 1]
    zero = D[:, 0] <= 0.0  # only possible if duplicates slipped through; guard anyway
    # all k distances equal: u = 0, m = inf (and a sum that rounding leaves at or below 0: no estimate either)
    ties = (~zero) & ((D[:, k - 1] == D[:, 0]) | (Sk <= 0.0))
    keep = ~(zero | ties) & np.isfinite(Sk)
    u = Sk[keep] / c
    if u.size < MIN_USED:
        return None, 1.0 / u, int(ties.sum()), int(zero.sum())
    m = 1.0 / u
    if pooling == "mg":
        value = 1.0 / np.mean(u)
    elif pooling == "mean":
        value = np.mean(m)
    else:
        value = np.median(m)
    return float(value), m, int(ties.sum()), int(zero.sum())


def mle_id(
    X: torch.Tensor,
    *,
    k: int = 20,
    normalizer: Normalizer = "k-1",
    pooling: Pooling = "mg",
    k1: int | None = None,
    k2: int | None = None,
    anchors: int | float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    memory_budget_mb: int = 1024,
    progress: ProgressFn = no_progress,
) -> Result:
    """Levina–Bickel / MacKay–Ghahramani MLE of the intrinsic dimension (docs/methods.md §1.1).

    ``value`` is m̂_k (or the k1..k2 average); ``details`` carries the ID-vs-k curve for k = 3..max(k, k2)
    (``per_k``, from one kNN call), quantiles of the per-point estimates 1/u_k at the headline k
    (``pointwise``; k2 when averaging), and the counts: ``n_input``, ``n_unique``, ``duplicates_removed``,
    ``n_anchors``, ``n_used``, ``ties_dropped``.

    ``anchors`` (an int count or a float fraction) queries a seeded random subset of the distinct points
    against all of them (Pope's ``--anchor-samples``/``--anchor-ratio``): the rows
    ``sorted(numpy.random.default_rng(seed).choice(n, size=m, replace=False))`` of the deduplicated data, with
    m = the count (capped at n, with a warning) or max(2, round(fraction·n)).

    >>> import torch
    >>> X = torch.rand(500, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> a = mle_id(X, k=10).value; b = mle_id(X, k=10, normalizer="k-2").value
    >>> abs(b - a * 8 / 9) < 1e-12 * a
    True
    """
    try:
        _check_args(k, normalizer, pooling, k1, k2, anchors, seed)
    except ValueError as exc:
        raise EstimatorError(f"mle: {exc}") from None
    kmax = k2 if k2 is not None else k
    prep = prepare(X, estimator="mle", min_points=kmax + 1)
    warnings = list(prep.warnings)
    n = prep.n_unique

    query_index = None
    n_anchors = n
    if anchors is not None:
        if isinstance(anchors, (int, np.integer)):
            n_anchors = int(anchors)
            if n_anchors > n:
                warnings.append(f"anchors={n_anchors} exceeds the {n} distinct points; all points are used as anchors")
                n_anchors = n
        else:
            n_anchors = max(MIN_USED, int(round(float(anchors) * n)))
            n_anchors = min(n_anchors, n)
        if n_anchors < n:
            rng = np.random.default_rng(seed)
            query_index = torch.from_numpy(np.sort(rng.choice(n, size=n_anchors, replace=False)).astype(np.int64))

    knn = prep.kneighbors(
        kmax,
        query_index=query_index,
        device=device,
        memory_budget_mb=memory_budget_mb,
        progress=scaled_progress(progress, 0.0, 0.9),
    )
    D = to_numpy64(knn.distances)
    del knn  # the neighbour indices are not needed here
    progress(0.9, "mle: pooling")

    ks = list(range(k1, k2 + 1)) if k1 is not None and k2 is not None else [k]
    per_k = []
    by_k: dict[int, tuple] = {}
    S = _log_ratio_sums(D)
    for kk in range(K_MIN, kmax + 1):
        val, m, ties, zero = _pooled_at_k(D, S, kk, normalizer, pooling)
        # the pointwise estimates are kept only where they are reported (the first and last k of the average)
        by_k[kk] = (val, m if kk in (ks[0], ks[-1]) else None, ties, zero)
        per_k.append({"k": kk, "value": val, "n_used": int(m.size), "ties_dropped": ties})
    q = D.shape[0]
    del S, D
    release_freed_memory()  # the pooling's temporaries, as kneighbors did for the search's

    lo = ks[0]
    val_lo, m_lo, ties_lo, zero_lo = by_k[lo]
    if any(by_k[kk][0] is None for kk in ks):
        raise too_few_error("mle", int(m_lo.size), MIN_USED, q, f"points whose {lo} neighbour distances are all equal")
    value = float(np.mean([by_k[kk][0] for kk in ks])) if len(ks) > 1 else float(val_lo)
    if ties_lo:
        warnings.append(
            dropped_warning(ties_lo, q, f"all their {lo} nearest-neighbour distances are equal (u=0)", "MLE")
        )
    if zero_lo:
        warnings.append(dropped_warning(zero_lo, q, "their nearest-neighbour distance is 0", "MLE"))

    head = ks[-1]
    details = {
        "k": k if k1 is None else None,
        "k1": k1,
        "k2": k2,
        "normalizer": normalizer,
        "pooling": pooling,
        "n_input": prep.n_input,
        "n_unique": n,
        "duplicates_removed": prep.duplicates_removed,
        "n_anchors": n_anchors,
        "anchors": anchors,
        "seed": seed,
        "n_used": int(m_lo.size),
        "ties_dropped": ties_lo,
        "zero_distance_dropped": zero_lo,
        "per_k": per_k,
        "pointwise_k": head,
        "pointwise": quantiles(by_k[head][1]),
        "reference": "skdim.id.MLE (k=20, k-1, MacKay–Ghahramani) with the defaults",
    }
    progress(1.0, "mle: done")
    return Result(value=value, details=details, warnings=warnings)


def _knn_k(params: MLEParams, n: int) -> int | None:  # noqa: ARG001 - n: every k is checked against it by mle_id
    """The k of mle's full self-query (registry ``knn_k``); None with anchors (it queries a subset then)."""
    return (params.k2 if params.k2 is not None else params.k) if params.anchors is None else None


def _cost(params: MLEParams, n: int, d: int) -> float:
    """Registry ``cost``: one kNN search of the anchors (all n points without anchors) against the n points."""
    a = params.anchors
    queries = n if a is None else (min(int(a), n) if isinstance(a, int) else float(a) * n)
    return float(queries) * n * d


@register(
    name="mle",
    version=VERSION,
    params=MLEParams,
    summary="Levina–Bickel MLE intrinsic dimension, MacKay–Ghahramani pooling (skdim-compatible), docs/methods.md §1.1",
    min_samples=K_MIN + 1,
    knn_k=_knn_k,
    cost=_cost,
)
def mle(X: torch.Tensor, y, params: MLEParams, *, device, progress: ProgressFn) -> Result:  # noqa: ARG001 - y unused
    """Registered estimator ``mle``: :func:`mle_id` with :class:`MLEParams` (labels are ignored)."""
    return mle_id(X, **params.model_dump(), device=device, progress=progress)
