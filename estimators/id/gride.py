"""Gride: multiscale maximum-likelihood intrinsic dimension (Denti et al., Sci. Rep. 2022), docs/methods.md §1.5.

For neighbour ranks n1 < n2 let μ_i = T_{n2}(x_i)/T_{n1}(x_i). Under local uniformity up to rank n2,

    f(μ) = d (μ^d − 1)^{n2−n1−1} / (B(n2−n1, n1) μ^{(n2−1)d+1}),   μ > 1,

and, over the N ratios kept,

    ℓ(d) = (N−1) ln d + (n2−n1−1) Σ ln(μ_i^d − 1) − ((n2−1)d + 1) Σ ln μ_i − N ln B(n2−n1, n1).

The (N−1) in front of ln d (docs/methods.md writes N) is DADApy's convention: it makes (n1, n2) = (1, 2) the unbiased
TwoNN ML estimate (N−1)/Σ ln μ, and it is what ``dadapy.Data.return_id_scaling_gride`` maximises. ℓ is strictly
concave (ℓ'' < 0 term by term), ℓ' → +∞ as d → 0 and ℓ' → −n1 Σ ln μ < 0 as d → ∞, so the maximiser is the
unique root of

    ℓ'(d) = (N−1)/d + (n2−n1−1) Σ ln μ_i / (1 − μ_i^{−d}) − (n2−1) Σ ln μ_i,

found by a bracketed Brent search to ~1e−13 relative (closed form when n2 = n1 + 1). The error bar is
√(1/−ℓ''(d̂)) with −ℓ''(d) = (N−1)/d² + (n2−n1−1) Σ (ln μ_i)² μ_i^{−d}/(1 − μ_i^{−d})² (observed Fisher
information of the ratios used). DADApy computes it with N/d² and over the unfiltered ratios; the two
differ by O(1/N) relative.

As in DADApy, before the fit the ratios with μ ≥ 20·(q95 − q50) + q50 (q = percentiles of μ) are dropped
("very likely overlapping points"); the count is reported per step. When q95 = q50 (quantised data whose upper
half of ratios are all equal) that rule would drop every ratio ≥ the median, so no ratio is filtered then.

``gride_id`` evaluates the doubling ladder (n1, n2) = (1, 2), (2, 4), …, up to ``range_max`` (DADApy's
``return_id_scaling_gride(range_max=64)``: 6 steps, (32, 64) last) from one kNN call. The *scale* of a step is
DADApy's: the mean of T_{n1} and T_{n2} over the points. ``value`` is the estimate at the last ladder step
(n1, n2) = (range_max/2, range_max) — the largest, least noise-sensitive scale, and the point of docs/methods.md §6's
reference values — unless ``n1`` and ``n2`` name another pair. Read the whole curve: the plateau is the ID to
report; a rise at small scales signals noise, a drift at large scales curvature (docs/methods.md §1.5).

Guards: exact duplicates are removed first (T_{n1} = 0); points with T_{n1} = T_{n2} (μ = 1, lattice data) are
dropped at that step and counted with a warning (DADApy instead nudges μ = 1 by 10 ε).

Example
-------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> X = torch.randn(2000, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 20, generator=g, dtype=torch.float64)
>>> r = gride_id(X)
>>> [(c["n1"], c["n2"]) for c in r.details["curve"]]
[(1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
>>> 3.3 < r.value < 4.5
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from estimators.base import (  # parameter bounds
    MAX_MEMORY_BUDGET_MB,
    MAX_NEIGHBOURS,
    EstimatorError,
    Params,
    ProgressFn,
    Result,
    no_progress,
    scaled_progress,
)
from estimators.id._common import prepare, to_numpy64
from estimators.knn import release_freed_memory
from estimators.registry import register

VERSION = "1.0.0"
#: DADApy's outlier threshold on μ: drop μ ≥ FILTER_FACTOR·(q95 − q50) + q50
FILTER_FACTOR = 20.0
#: fewest ratios a step's fit may rest on
MIN_FIT = 2


def _check_args(range_max, n1, n2, ci_level) -> None:
    if isinstance(range_max, bool) or not isinstance(range_max, (int, np.integer)) or range_max < 2:
        raise ValueError(f"range_max must be an integer >= 2 (DADApy default 64), got {range_max!r}")
    if (n1 is None) != (n2 is None):
        raise ValueError("give both n1 and n2 to select the scale of the headline value, or neither (last ladder step)")
    if n1 is not None:
        for name, v in (("n1", n1), ("n2", n2)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a neighbour rank >= 1, got {v!r}")
        if n2 <= n1:
            raise ValueError(f"n2={n2} must be larger than n1={n1} (e.g. n1=32, n2=64)")
    if not (0.0 < float(ci_level) < 1.0):
        raise ValueError(f"ci_level must lie in (0, 1), got {ci_level}")


class GrideParams(Params):
    """Params of the ``gride`` estimator (defaults = DADApy ``return_id_scaling_gride(range_max=64)``)."""

    range_max: int = Field(
        64, le=MAX_NEIGHBOURS, description="largest neighbour rank of the doubling ladder (1,2), (2,4), …"
    )
    n1: int | None = Field(
        None,
        le=MAX_NEIGHBOURS,
        description="with n2: the (n1, n2) pair of the headline value (default: last ladder step)",
    )
    n2: int | None = Field(None, le=MAX_NEIGHBOURS, description="with n1: the (n1, n2) pair of the headline value")
    ci_level: float = Field(0.95, description="level of the normal interval value ± z·err")
    memory_budget_mb: int = Field(
        1024, ge=16, le=MAX_MEMORY_BUDGET_MB, description="memory the neighbour search may use"
    )

    @model_validator(mode="after")
    def _cross_check(self) -> GrideParams:
        _check_args(self.range_max, self.n1, self.n2, self.ci_level)
        return self


def _ladder(range_max: int, n2: int | None, n: int) -> tuple[list[tuple[int, int]], int]:
    """The doubling ladder (1, 2), (2, 4), … up to ``range_max`` on ``n`` distinct points (capped at the n − 1
    neighbours there are), and the neighbour count ``kmax`` its one kNN call needs."""
    max_rank = min(n - 1, int(range_max))
    steps = int(max_rank).bit_length() - 1  # largest i with 2**i <= max_rank
    ladder = [(2**i, 2 ** (i + 1)) for i in range(steps)]
    return ladder, max([b for _, b in ladder] + ([n2] if n2 is not None else []))


def _dloglik(d: float, log_mu: np.ndarray, n1: int, n2: int, n: int) -> float:
    """ℓ'(d) of the Gride likelihood (DADApy's (N−1) convention)."""
    one_m = -np.expm1(-d * log_mu)  # 1 − μ^{−d}, accurate for d·ln μ ≪ 1
    return (n - 1) / d + (n2 - n1 - 1) * float(np.sum(log_mu / one_m)) - (n2 - 1) * float(np.sum(log_mu))


def _fisher(d: float, log_mu: np.ndarray, n1: int, n2: int, n: int) -> float:
    """−ℓ''(d) (observed Fisher information)."""
    x = d * log_mu
    one_m = -np.expm1(-x)
    return (n - 1) / d**2 + (n2 - n1 - 1) * float(np.sum(log_mu**2 * np.exp(-x) / one_m**2))


def _solve(log_mu: np.ndarray, n1: int, n2: int) -> float:
    """The maximiser of ℓ (the root of the decreasing ℓ')."""
    from scipy import optimize  # lazy, as scipy.stats below (import cost paid only by gride's callers)

    n = log_mu.size
    s = float(np.sum(log_mu))
    if n2 == n1 + 1:
        return (n - 1) / ((n2 - 1) * s)
    f = lambda d: _dloglik(d, log_mu, n1, n2, n)  # noqa: E731
    hi = max(1.0, (n - 1) / (n1 * s))
    while f(hi) > 0:
        hi *= 2.0
        if hi > 1e8:
            raise ValueError("no maximum below d = 1e8")
    lo = hi / 2.0
    while f(lo) < 0:
        lo /= 2.0
        if lo < 1e-12:
            raise ValueError("no maximum above d = 1e-12")
    return float(optimize.brentq(f, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500))


def _step(D: np.ndarray, n1: int, n2: int) -> dict:
    """Gride at one (n1, n2) from ascending neighbour distances ``D`` (points × ≥n2); T_j = D[:, j−1]."""
    r1, r2 = D[:, n1 - 1], D[:, n2 - 1]
    zero = r1 <= 0.0
    ties = (~zero) & (r2 <= r1)
    keep = ~(zero | ties)
    row: dict[str, Any] = {
        "n1": n1,
        "n2": n2,
        "scale": None,
        "r_n2": None,
        "id": None,
        "err": None,
        "n_used": 0,
        "n_filtered": 0,
        "ties_dropped": int(ties.sum()),
        "zero_distance_dropped": int(zero.sum()),
    }
    if keep.sum() == 0:
        return row
    row["scale"] = float(np.mean((r1[keep] + r2[keep]) / 2.0))
    row["r_n2"] = float(np.mean(r2[keep]))
    mu = r2[keep] / r1[keep]
    q95, q50 = np.percentile(mu, [95, 50])
    if q95 > q50:
        sel = mu < FILTER_FACTOR * (q95 - q50) + q50
    else:  # the upper half of the ratios are all equal: DADApy's rule would drop them all, so keep every ratio
        sel = np.ones(mu.size, dtype=bool)
    row["n_filtered"] = int(mu.size - sel.sum())
    mu = mu[sel]
    row["n_used"] = int(mu.size)
    if mu.size < MIN_FIT:
        return row
    log_mu = np.log(mu)
    d = _solve(log_mu, n1, n2)
    row["id"] = d
    row["err"] = float(math.sqrt(1.0 / _fisher(d, log_mu, n1, n2, mu.size)))
    return row


def gride_id(
    X: torch.Tensor,
    *,
    range_max: int = 64,
    n1: int | None = None,
    n2: int | None = None,
    ci_level: float = 0.95,
    device: str | torch.device = "cpu",
    memory_budget_mb: int = 1024,
    progress: ProgressFn = no_progress,
) -> Result:
    """Gride ID curve over the doubling ladder and the headline value (docs/methods.md §1.5; module docstring).

    ``details["curve"]`` = [{n1, n2, scale, r_n2, id, err, n_used, n_filtered, ties_dropped, …}] per ladder
    step; ``details["selected"]`` = the (n1, n2) row behind ``value``; counts ``n_input``, ``n_unique``,
    ``duplicates_removed``. ``ci`` = value ± z·err (normal approximation).

    >>> import torch
    >>> X = torch.rand(600, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    >>> r = gride_id(X, range_max=16, n1=4, n2=8)
    >>> r.details["selected"]["n1"], abs(r.value - 2) < 0.3
    (4, True)
    """
    try:
        _check_args(range_max, n1, n2, ci_level)
    except ValueError as exc:
        raise EstimatorError(f"gride: {exc}") from None
    prep = prepare(X, estimator="gride", min_points=3 if n2 is None else n2 + 1)
    warnings = list(prep.warnings)
    n = prep.n_unique
    ladder, kmax = _ladder(range_max, n2, n)
    max_rank = min(n - 1, int(range_max))
    if max_rank < int(range_max):
        warnings.append(
            f"range_max={range_max} exceeds the {n - 1} neighbours available; the ladder stops at "
            f"({ladder[-1][0]}, {ladder[-1][1]})"
        )
    knn = prep.kneighbors(
        kmax, device=device, memory_budget_mb=memory_budget_mb, progress=scaled_progress(progress, 0.0, 0.9)
    )
    D = to_numpy64(knn.distances)
    progress(0.9, "gride: likelihood")
    curve = []
    for a, b in ladder:
        try:
            curve.append(_step(D, a, b))
        except ValueError as exc:
            raise EstimatorError(f"gride: the likelihood at (n1, n2) = ({a}, {b}) has no maximum: {exc}") from None
    target = (n1, n2) if n1 is not None and n2 is not None else ladder[-1]  # both or neither (_check_args)
    sel = next((row for row in curve if (row["n1"], row["n2"]) == target), None)
    if sel is None:
        sel = _step(D, *target)
    if sel["id"] is None:
        raise EstimatorError(
            f"gride: only {sel['n_used']} of {n} distinct points remain at (n1, n2) = {target} after dropping "
            f"{sel['ties_dropped']} points with T_n1 = T_n2 and {sel['n_filtered']} outlying ratios; at least "
            f"{MIN_FIT} are needed. Use data with more distinct distances or other ranks"
        )
    tied = [f"({r['n1']},{r['n2']}): {r['ties_dropped']}" for r in curve if r["ties_dropped"]]
    if all(sel is not r for r in curve) and sel["ties_dropped"]:
        tied.append(f"({sel['n1']},{sel['n2']}): {sel['ties_dropped']}")
    if tied:
        warnings.append(
            "points with equal n1-th and n2-th neighbour distances (μ = 1; ties from quantised or lattice data) "
            f"were dropped per step, of {n}: " + ", ".join(tied)
        )
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + ci_level / 2))
    value, err = sel["id"], sel["err"]
    details = {
        "range_max": int(range_max),
        "max_rank": max_rank,
        "selected": sel,
        "curve": curve,
        "n_input": prep.n_input,
        "n_unique": n,
        "duplicates_removed": prep.duplicates_removed,
        "ties_dropped": sel["ties_dropped"],
        "filter": f"mu < {FILTER_FACTOR:g}*(q95 - q50) + q50 per step (DADApy)",
        "reference": "dadapy.Data(X).return_id_scaling_gride(range_max=64): id and scale per step",
    }
    release_freed_memory()  # the post-processing temporaries, as kneighbors did for the search's
    progress(1.0, "gride: done")
    return Result(
        value=value,
        ci=(value - z * err, value + z * err),
        ci_method=f"normal {ci_level:.0%} interval, value ± z·sqrt(1/observed Fisher information)",
        details=details,
        warnings=warnings,
    )


@register(
    name="gride",
    version=VERSION,
    params=GrideParams,
    summary="Gride multiscale ML intrinsic dimension over (n1, n2) = (1,2)…(32,64), DADApy-compatible (docs/methods.md §1.5)",
    min_samples=3,
    knn_k=lambda params, n: _ladder(params.range_max, params.n2, n)[1],
    cost=lambda params, n, d: float(n) * n * d,  # its one full kNN search
)
def gride(X: torch.Tensor, y, params: GrideParams, *, device, progress: ProgressFn) -> Result:  # noqa: ARG001
    """Registered estimator ``gride``: :func:`gride_id` with :class:`GrideParams` (labels are ignored)."""
    return gride_id(X, **params.model_dump(), device=device, progress=progress)
