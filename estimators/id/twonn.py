"""TwoNN intrinsic dimension (Facco et al., Sci. Rep. 2017), docs/methods.md §1.2.

With r1, r2 the distances of a point to its first and second nearest neighbours, μ = r2/r1 follows a Pareto
law with shape d under local uniformity: F(μ) = 1 − μ^{−d}, i.e. ln μ ~ Exponential(rate d). Let N be the number
of points, μ_(1) ≤ … ≤ μ_(N) the sorted ratios and n = int(N·(1 − discard_fraction)) the number kept.

* ``variant="ls"`` (default, = ``skdim.id.TwoNN()`` exactly): least-squares line through the origin of
  y_i = −ln(1 − i/N) against x_i = ln μ_(i), i = 1..n:  d = Σ x_i y_i / Σ x_i².
* ``variant="ml"``: the largest N − n ratios are treated as censored (Type-II censoring of exponentials), with
  total T = Σ_{i≤n} ln μ_(i) + (N − n) ln μ_(n) ~ Gamma(n, d); the unbiased estimate is d = (n − 1)/T
  (= ``skdim.id.TwoNN(method="mle")``; with ``discard_fraction=0`` it is (N − 1)/Σ ln μ, DADApy
  ``compute_id_2NN(algorithm="ml")``). CI: exact, from the Gamma pivot 2dT ~ χ²_{2n}.
* ``variant="bayes"``: Gamma(α=2, β=5) prior on d, posterior Gamma(α + n, β + T); value = posterior mean
  (α + n)/(β + T), CI = the equal-tailed credible interval. With ``discard_fraction=0`` this is DADApy
  ``compute_id_2NN_wprior()``.

``details["decimation"]``: the estimate on seeded random disjoint subsets of N/2, N/4, … points (up to
``decimation_repeats`` subsets per level, mean ± sd), for a scale plot (docs/methods.md §1.2 pitfalls). Level l
(size s = N // 2^l, down to 20 points) draws ``perm = rng.permutation(N)`` from one
``numpy.random.default_rng(seed)`` and uses the blocks perm[j·s:(j+1)·s], j < min(2^l, repeats), of the
deduplicated data; each block gets its own 2-NN search, so its estimate is TwoNN at that sampling density.

Guards: exact duplicates are removed first (r1 = 0 would give μ = ∞); points with r1 = r2 (ln μ = 0, typical of
quantised or lattice data) are dropped and counted with a warning.

Example
-------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> Z = torch.randn(2000, 3, generator=g, dtype=torch.float64)
>>> X = Z @ torch.linalg.qr(torch.randn(30, 3, generator=g, dtype=torch.float64))[0].T
>>> r = twonn_id(X, decimation=False)
>>> 2.7 < r.value < 3.3
True
>>> r = twonn_id(X, variant="ml", decimation=False); r.ci_method.startswith("exact")
True
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from estimators.base import (  # parameter bounds
    MAX_MEMORY_BUDGET_MB,
    MAX_SEED,
    EstimatorError,
    Params,
    ProgressFn,
    Result,
    no_progress,
    scaled_progress,
)
from estimators.id._common import dropped_warning, prepare, quantiles, to_numpy64, too_few_error
from estimators.knn import kneighbors, release_freed_memory
from estimators.registry import register

VERSION = "1.0.0"
#: smallest decimated subset whose estimate is reported
DECIMATION_MIN_POINTS = 20
#: fewest points a fit may rest on
MIN_FIT = 2

Variant = Literal["ls", "ml", "bayes"]


def _check_args(variant, discard_fraction, decimation, decimation_repeats, ci_level, prior_alpha, prior_beta, seed):
    if variant not in ("ls", "ml", "bayes"):
        raise ValueError(f"variant must be 'ls' (skdim), 'ml' or 'bayes', got {variant!r}")
    if not (0.0 <= float(discard_fraction) < 1.0):
        raise ValueError(f"discard_fraction must lie in [0, 1), got {discard_fraction}; the paper discards 0.1")
    if variant == "ls" and float(discard_fraction) == 0.0:
        raise ValueError(
            "variant 'ls' needs discard_fraction > 0: the largest ratio has F_emp = N/N = 1 and −ln(1 − 1) = ∞; "
            "use discard_fraction=0.1 (paper, skdim) or variant 'ml' to use every ratio"
        )
    if not isinstance(decimation, bool):
        raise ValueError(f"decimation must be true or false, got {decimation!r}")
    if (
        isinstance(decimation_repeats, bool)
        or not isinstance(decimation_repeats, (int, np.integer))
        or decimation_repeats < 1
    ):
        raise ValueError(f"decimation_repeats must be an integer >= 1, got {decimation_repeats!r}")
    if not (0.0 < float(ci_level) < 1.0):
        raise ValueError(f"ci_level must lie in (0, 1), got {ci_level}")
    if not (float(prior_alpha) > 0 and float(prior_beta) > 0):
        raise ValueError(f"prior_alpha and prior_beta must be > 0 (DADApy: 2 and 5), got {prior_alpha}, {prior_beta}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")


class TwoNNParams(Params):
    """Params of the ``twonn`` estimator (defaults = ``skdim.id.TwoNN()``, docs/methods.md §1.2)."""

    variant: Variant = Field(
        "ls", description="'ls' (skdim LS fit), 'ml' (censored ML, exact CI) or 'bayes' (Gamma prior)"
    )
    discard_fraction: float = Field(
        0.1, description="fraction of the largest ratios μ discarded (ls) or censored (ml/bayes)"
    )
    decimation: bool = Field(True, description="also estimate on random N/2, N/4, … subsets (scale plot)")
    decimation_repeats: int = Field(8, le=1000, description="subsets per decimation level (at most)")
    ci_level: float = Field(0.95, description="level of the ml/bayes interval")
    prior_alpha: float = Field(2.0, description="Gamma prior shape (bayes; DADApy 2)")
    prior_beta: float = Field(5.0, description="Gamma prior rate (bayes; DADApy 5)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the decimation subsets")
    memory_budget_mb: int = Field(
        1024, ge=16, le=MAX_MEMORY_BUDGET_MB, description="memory the neighbour search may use"
    )

    @model_validator(mode="after")
    def _cross_check(self) -> TwoNNParams:
        _check_args(
            self.variant,
            self.discard_fraction,
            self.decimation,
            self.decimation_repeats,
            self.ci_level,
            self.prior_alpha,
            self.prior_beta,
            self.seed,
        )
        return self


def _ratios(D: np.ndarray):
    """μ = r2/r1 of the usable points, and the counts of r1 = 0 and r1 = r2 points dropped."""
    r1, r2 = D[:, 0], D[:, 1]
    zero = r1 <= 0.0
    ties = (~zero) & (r2 <= r1)
    keep = ~(zero | ties)
    return r2[keep] / r1[keep], int(zero.sum()), int(ties.sum()), keep


def _fit(mu: np.ndarray, variant: str, discard_fraction: float, ci_level: float, alpha: float, beta: float) -> dict:
    """The TwoNN estimate from the ratios ``mu`` (all > 1). Raises ValueError if too few are kept."""
    N = int(mu.size)
    n_keep = int(N * (1 - discard_fraction))
    if n_keep < MIN_FIT or (variant == "ls" and n_keep >= N):
        raise ValueError(f"{N} ratios leave {n_keep} after discarding the largest {discard_fraction:g}")
    x = np.log(np.sort(mu)[:n_keep])
    out: dict = {"n_used": N, "n_fit": n_keep}
    if variant == "ls":
        y = -np.log(1.0 - np.arange(1, n_keep + 1) / N)
        out["value"] = float(np.dot(x, y) / np.dot(x, x))
        out["ci"] = None
        return out
    from scipy import stats  # lazy, and only for the intervals: scipy.stats adds ~40 MB and 0.3 s to its importer

    total = float(np.sum(x) + (N - n_keep) * x[-1])  # censored total ~ Gamma(n_keep, rate d)
    lo_q, hi_q = (1 - ci_level) / 2, 1 - (1 - ci_level) / 2
    out["censored_total"] = total
    if variant == "ml":
        out["value"] = float((n_keep - 1) / total)
        out["ci"] = (
            float(stats.chi2.ppf(lo_q, 2 * n_keep) / (2 * total)),
            float(stats.chi2.ppf(hi_q, 2 * n_keep) / (2 * total)),
        )
        return out
    a, b = alpha + n_keep, beta + total
    out["value"] = float(a / b)
    out["ci"] = (float(stats.gamma.ppf(lo_q, a, scale=1 / b)), float(stats.gamma.ppf(hi_q, a, scale=1 / b)))
    out["posterior"] = {
        "prior_alpha": alpha,
        "prior_beta": beta,
        "alpha": a,
        "beta": b,
        "mean": a / b,
        "sd": math.sqrt(a) / b,
        "mode": (a - 1) / b,
    }
    return out


def _decimation_plan(n_full: int, repeats: int) -> list[tuple[int, int, int]]:
    """The decimation levels (level l, subset size N // 2^l, subsets searched) down to ``DECIMATION_MIN_POINTS``."""
    plan = []
    size = n_full // 2
    level = 1
    while size >= DECIMATION_MIN_POINTS:
        plan.append((level, size, min(2**level, repeats)))
        level += 1
        size = n_full // 2**level
    return plan


def _cost(params: TwoNNParams, n: int, d: int) -> float:
    """Registry ``cost``: the full 2-NN search (n²·d) plus, with decimation, one search per subset (about as much
    again: N/2 × 2, N/4 × 4, …)."""
    searches = n * n
    if params.decimation:
        searches += sum(r * s * s for _, s, r in _decimation_plan(n, params.decimation_repeats))
    return float(searches) * d


def _decimation(
    X,
    n_full,
    full_value,
    full_scale,
    variant,
    discard_fraction,
    ci_level,
    alpha,
    beta,
    repeats,
    seed,
    device,
    memory_budget_mb,
    progress,
):
    """Estimates on seeded disjoint random subsets of N/2, N/4, … points."""
    levels = [
        {
            "n": n_full,
            "fraction": 1.0,
            "repeats": 1,
            "mean": full_value,
            "sd": None,
            "values": [full_value],
            "scale": full_scale,
            "failed": 0,
        }
    ]
    rng = np.random.default_rng(seed)
    plan = _decimation_plan(n_full, repeats)
    total_work = sum(r * s * s for _, s, r in plan) or 1
    done = 0
    for level, size, r in plan:
        perm = rng.permutation(n_full)
        values, scales, failed = [], [], 0
        for j in range(r):
            idx = torch.from_numpy(np.sort(perm[j * size : (j + 1) * size]).astype(np.int64))
            knn = kneighbors(X[idx], 2, device=device, memory_budget_mb=memory_budget_mb)
            D = to_numpy64(knn.distances)
            mu, _, _, keep = _ratios(D)
            try:
                fit = _fit(mu, variant, discard_fraction, ci_level, alpha, beta)
            except ValueError:
                failed += 1
                continue
            values.append(fit["value"])
            scales.append(float(np.mean(D[keep, :2])))
            done += size * size
            progress(done / total_work, f"twonn: decimation N/{2**level}")
        levels.append(
            {
                "n": size,
                "fraction": size / n_full,
                "repeats": len(values),
                "mean": float(np.mean(values)) if values else None,
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "values": values,
                "scale": float(np.mean(scales)) if scales else None,
                "failed": failed,
            }
        )
    return levels


def twonn_id(
    X: torch.Tensor,
    *,
    variant: Variant = "ls",
    discard_fraction: float = 0.1,
    decimation: bool = True,
    decimation_repeats: int = 8,
    ci_level: float = 0.95,
    prior_alpha: float = 2.0,
    prior_beta: float = 5.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    memory_budget_mb: int = 1024,
    progress: ProgressFn = no_progress,
) -> Result:
    """TwoNN intrinsic dimension (docs/methods.md §1.2); see the module docstring for the three variants.

    ``details``: ``n_input``, ``n_unique``, ``duplicates_removed``, ``n_used`` (ratios after the guards),
    ``n_fit`` (ratios kept after the discard), ``ties_dropped`` (r1 = r2), ``mu`` (quantiles of μ),
    ``scale`` (mean of r1 and r2, DADApy's convention), ``decimation`` (list of levels with n, mean, sd, values,
    scale), and for ``bayes`` the ``posterior``.

    >>> import torch
    >>> X = torch.rand(1000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    >>> r = twonn_id(X, variant="bayes", discard_fraction=0.0, decimation=False)
    >>> r.ci[0] < r.value < r.ci[1]
    True
    """
    try:
        _check_args(variant, discard_fraction, decimation, decimation_repeats, ci_level, prior_alpha, prior_beta, seed)
    except ValueError as exc:
        raise EstimatorError(f"twonn: {exc}") from None
    prep = prepare(X, estimator="twonn", min_points=3)
    warnings = list(prep.warnings)
    n = prep.n_unique
    knn_share = 0.5 if decimation else 0.95
    knn = prep.kneighbors(
        2, device=device, memory_budget_mb=memory_budget_mb, progress=scaled_progress(progress, 0.0, knn_share)
    )
    D = to_numpy64(knn.distances)
    mu, zero, ties, keep = _ratios(D)
    try:
        fit = _fit(mu, variant, discard_fraction, ci_level, prior_alpha, prior_beta)
    except ValueError:
        needed = MIN_FIT
        while int(needed * (1 - discard_fraction)) < MIN_FIT or (
            variant == "ls" and int(needed * (1 - discard_fraction)) >= needed
        ):
            needed += 1
        raise too_few_error(
            "twonn",
            int(mu.size),
            needed,
            n,
            f"{ties} points with r1 = r2 (equal first and second neighbour distances) and discarding the largest "
            f"{discard_fraction:g} of the ratios",
        ) from None
    if ties:
        warnings.append(
            dropped_warning(ties, n, "their first and second neighbour distances are equal (r1 = r2)", "TwoNN")
        )
    if zero:
        warnings.append(dropped_warning(zero, n, "their nearest-neighbour distance is 0", "TwoNN"))
    scale = float(np.mean(D[keep, :2]))

    details = {
        "variant": variant,
        "discard_fraction": discard_fraction,
        "n_input": prep.n_input,
        "n_unique": n,
        "duplicates_removed": prep.duplicates_removed,
        "n_used": fit["n_used"],
        "n_fit": fit["n_fit"],
        "ties_dropped": ties,
        "zero_distance_dropped": zero,
        "mu": quantiles(mu),
        "scale": scale,
        "reference": {
            "ls": "skdim.id.TwoNN() (LS through the origin, F_emp denominator N)",
            "ml": "skdim.id.TwoNN(method='mle'); discard_fraction=0: DADApy compute_id_2NN(algorithm='ml')",
            "bayes": "discard_fraction=0: DADApy compute_id_2NN_wprior(alpha=2, beta=5)",
        }[variant],
    }
    ci_method = None
    if variant == "ml":
        ci_method = (
            f"exact {ci_level:.0%} interval from the Gamma(n_fit, d) law of the censored total of ln μ "
            "(chi-square pivot; assumes independent μ)"
        )
        details["censored_total"] = fit["censored_total"]
    elif variant == "bayes":
        ci_method = (
            f"{ci_level:.0%} equal-tailed credible interval of the Gamma posterior "
            f"(prior Gamma({prior_alpha:g}, {prior_beta:g}); assumes independent μ)"
        )
        details["posterior"] = fit["posterior"]
        details["censored_total"] = fit["censored_total"]

    if decimation:
        details["decimation"] = _decimation(
            prep.X,
            n,
            fit["value"],
            scale,
            variant,
            discard_fraction,
            ci_level,
            prior_alpha,
            prior_beta,
            decimation_repeats,
            seed,
            device,
            memory_budget_mb,
            scaled_progress(progress, knn_share, 0.99),
        )
    else:
        details["decimation"] = None
    release_freed_memory()  # the post-processing temporaries, as kneighbors did for the search's
    progress(1.0, "twonn: done")
    return Result(value=fit["value"], ci=fit["ci"], ci_method=ci_method, details=details, warnings=warnings)


@register(
    name="twonn",
    version=VERSION,
    params=TwoNNParams,
    summary="TwoNN intrinsic dimension: skdim LS fit with 10% discard; censored-ML and Bayesian variants with CI (docs/methods.md §1.2)",
    min_samples=3,
    knn_k=lambda params, n: 2,  # the two nearest of every distinct point (the decimation levels search subsets)
    cost=_cost,
)
def twonn(X: torch.Tensor, y, params: TwoNNParams, *, device, progress: ProgressFn) -> Result:  # noqa: ARG001
    """Registered estimator ``twonn``: :func:`twonn_id` with :class:`TwoNNParams` (labels are ignored)."""
    return twonn_id(X, **params.model_dump(), device=device, progress=progress)
