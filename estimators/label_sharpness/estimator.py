"""Label sharpness K_F (Konz & Mazurowski, ICLR 2024; docs/methods.md §2).

    K_F = max_{j≠k} 1[y_j ≠ y_k] / ‖x_j − x_k‖₂  =  1 / δ,    δ = min_{y_j ≠ y_k} ‖x_j − x_k‖₂

(the paper's formula with the multi-class numerator 1[y_j ≠ y_k]; the reference repo's HEAD uses 1[y_j = y_k]
and so returns 1/(minimum same-class distance) — a bug, not reproduced here). Same-label pairs contribute 0,
so K_F is 1 over the smallest distance between two differently labelled samples: a lower estimate of the
labelling function's Lipschitz constant.

Modes
-----
``exact`` (default): δ over ALL N² pairs, exactly, via :func:`estimators.knn.pairs.interclass_min` (principal-
direction lower bounds prune the pairs; the surviving ones are measured in float64 as ‖x_j − x_k‖). Also the
C×C matrix of minimum distances between every two classes (``details.class_min_distance``), so a user sees which
classes touch, and the ``top_pairs`` closest differently labelled pairs (``details.offending_pairs``).

``paper``: Konz & Mazurowski's estimator for comparability: ``m`` = 1000 random samples (seeded, not stratified
unless ``stratify``), all pairs inside. Its value is ≤ the exact K_F (a subset of the pairs) and grows with m.
``ci``: percentile interval of K_F over ``n_bootstrap`` bootstrap resamples (m points drawn with replacement
from the N), which is the spread of the paper's estimator over random subsamples when N ≫ m.

Duplicates (docs/methods.md §0): rows repeated with the same label are collapsed (they add no new distance);
rows repeated with *different* labels ("conflicting duplicates") are counted and listed in
``details.conflicting_duplicates``. They make δ = 0 and K_F infinite, which is reported as such
(``value = inf``, written "inf" in JSON reports) with a warning — never an error.

Scale (docs/methods.md §2): K_F scales as 1/(value range · √#features); ``details.scale`` records the value range and
the number of features, and rankings are only comparable at identical resolution, channels and range.

Example
-------
>>> import torch
>>> from estimators.device import resolve_device
>>> X = torch.tensor([[0.0, 0.0], [4.0, 0.0]]); y = torch.tensor([0, 1])
>>> label_sharpness(X, y, LabelSharpnessParams(), device=resolve_device("cpu"), progress=no_progress).value
0.25
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from estimators.base import (  # parameter bounds
    MAX_MEMORY_BUDGET_MB,
    MAX_SEED,
    Params,
    ProgressFn,
    Result,
    no_progress,
)
from estimators.knn.pairs import exact_interclass, interclass_min
from estimators.registry import register
from estimators.validation import as_labelled

VERSION = "1.0.0"

SCALE_CAVEAT = (
    "K_F depends on the input scale: it scales as 1/(value range · √#features). Compare K_F only between "
    "datasets with identical resolution, channels and value range (docs/methods.md §2)."
)


class LabelSharpnessParams(Params):
    """Params of ``label_sharpness`` (defaults per docs/methods.md §2)."""

    mode: Literal["exact", "paper"] = Field(
        "exact", description="'exact': all N² pairs; 'paper': Konz & Mazurowski's random subsample of m points"
    )
    m: int = Field(1000, ge=2, le=100_000, description="paper mode: subsample size (the paper uses 1000)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="paper mode: seed of the subsample and the bootstrap")
    stratify: bool = Field(False, description="paper mode: stratified subsample (the paper's is not stratified)")
    n_bootstrap: int = Field(200, ge=0, le=10000, description="paper mode: bootstrap resamples for the CI (0: none)")
    ci_level: float = Field(0.95, gt=0.0, lt=1.0, description="paper mode: confidence level of the bootstrap CI")
    top_pairs: int = Field(10, ge=1, le=1000, description="how many closest differently labelled pairs to list")
    prune_dims: int = Field(64, ge=1, le=1024, description="exact mode: principal directions of the pruning bound")
    memory_budget_mb: int = Field(1024, ge=16, le=MAX_MEMORY_BUDGET_MB, description="memory the pair search may use")


# --- input checks and duplicates -------------------------------------------------------------------------------


def _pair_rows(pairs, y: np.ndarray, index_map: np.ndarray | None = None) -> list[dict]:
    rows = []
    for i, j, d in pairs:
        if index_map is not None:
            i, j = int(index_map[i]), int(index_map[j])
        i, j = min(i, j), max(i, j)
        rows.append(
            {
                "i": i,
                "j": j,
                "label_i": int(y[i]),
                "label_j": int(y[j]),
                "distance": float(d),
                "k_f": (math.inf if d == 0 else 1.0 / d),
            }
        )
    return rows


def _class_matrix(res, index_map: np.ndarray):
    C = res.labels.size
    dist = [[None if a == b else float(res.class_min[a, b]) for b in range(C)] for a in range(C)]
    pair = [
        [
            None if a == b else [int(index_map[res.class_argmin[a, b, 0]]), int(index_map[res.class_argmin[a, b, 1]])]
            for b in range(C)
        ]
        for a in range(C)
    ]
    return dist, pair


def _scale(X: torch.Tensor) -> dict:
    return {
        "x_min": float(X.min()),
        "x_max": float(X.max()),
        "n_features": int(X.shape[1]),
        "max_norm": float(torch.linalg.vector_norm(X.to(torch.float64), dim=1).max()),
        "caveat": SCALE_CAVEAT,
    }


def _k_from_delta(delta: float) -> float:
    if delta == 0.0:
        return math.inf
    if math.isinf(delta):
        return 0.0
    return 1.0 / delta


# --- paper mode: a subsample, all pairs inside -------------------------------------------------------------------


def subsample_delta(X64: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[float, int, int]:
    """Exact min distance between differently labelled rows among ``X64[idx]`` (repeats allowed: a row drawn
    twice has its own label, so it adds nothing). Returns (δ, i, j) with i, j rows of X64; (inf, -1, -1) when
    the subsample holds one class. Candidates come from a float64 Gram matrix; every pair within rounding
    distance of the minimum is re-measured as ‖x_i − x_j‖."""
    S = X64[idx]
    ys = y[idx]
    sq = (S * S).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (S @ S.T)
    diff = ys[:, None] != ys[None, :]
    d2 = torch.where(diff, d2, torch.full_like(d2, math.inf))
    lo = float(d2.min())
    if math.isinf(lo):
        return math.inf, -1, -1
    tol = 4.0 * (S.shape[1] + 4) * 2.0**-53 * 2.0 * float(sq.max())  # ≥ the float64 Gram rounding error
    cand = torch.nonzero(d2 <= lo + tol)
    a, b = idx[cand[:, 0]], idx[cand[:, 1]]
    exact = torch.linalg.vector_norm(X64[a] - X64[b], dim=1)
    k = int(torch.argmin(exact))
    return float(exact[k]), int(a[k]), int(b[k])


def _draw_subsample(y_np: np.ndarray, m: int, rng: np.random.Generator, stratify: bool) -> np.ndarray:
    n = y_np.size
    if m >= n:
        return np.arange(n)
    if not stratify:
        return np.sort(rng.choice(n, size=m, replace=False))
    labels, counts = np.unique(y_np, return_counts=True)
    alloc = np.maximum(1, np.floor(m * counts / n).astype(np.int64))
    alloc = np.minimum(alloc, counts)
    while alloc.sum() < m:  # hand the remainder to the classes with the most room, largest first
        room = counts - alloc
        alloc[np.argmax(room * (counts / n))] += 1
    parts = [rng.choice(np.flatnonzero(y_np == c), size=int(a), replace=False) for c, a in zip(labels, alloc)]
    return np.sort(np.concatenate(parts))


def _paper(X: torch.Tensor, y: torch.Tensor, p: LabelSharpnessParams, device, progress: ProgressFn) -> Result:
    n = X.shape[0]
    y_np = y.numpy()
    rng = np.random.default_rng(p.seed)
    idx = _draw_subsample(y_np, p.m, rng, p.stratify)
    warnings: list[str] = []
    if idx.size >= n:
        warnings.append(
            f"paper mode: m={p.m} >= N={n}, so the subsample is the whole dataset and the value equals the exact K_F"
        )
    X64 = X.to(device, torch.float64)
    yd = y.to(device)
    progress(0.0, "subsample")
    res = interclass_min(
        X[idx],
        y[idx],
        top_k=p.top_pairs,
        prune_dims=p.prune_dims,
        seed=p.seed,
        device=device,
        memory_budget_mb=p.memory_budget_mb,
    )
    delta = res.delta
    value = _k_from_delta(delta)
    missing = sorted(set(np.unique(y_np).tolist()) - set(np.unique(y_np[idx]).tolist()))
    if missing:
        warnings.append(
            f"paper mode: classes {missing[:20]} are missing from the random subsample of {idx.size}; their pairs "
            "are not measured (use stratify=true or mode='exact')"
        )
    if delta == 0.0:
        warnings.append("the subsample contains identical samples with different labels: K_F is infinite")
    boot = []
    for b in range(p.n_bootstrap):
        bidx = torch.from_numpy(rng.integers(0, n, size=min(p.m, n))).to(device)
        boot.append(_k_from_delta(subsample_delta(X64, yd, bidx)[0]))
        progress(0.3 + 0.7 * (b + 1) / p.n_bootstrap, "bootstrap")
    ci = None
    details_boot: dict[str, Any] = {"n": p.n_bootstrap}
    if boot:
        arr = np.asarray(boot)
        alpha = (1.0 - p.ci_level) / 2.0
        lo, hi = np.quantile(arr, [alpha, 1.0 - alpha], method="inverted_cdf")
        ci = (float(lo), float(hi))
        details_boot.update(
            {
                "method": f"percentile, {p.n_bootstrap} resamples of m={min(p.m, n)} points drawn with replacement",
                "quantiles": {
                    str(q): float(np.quantile(arr, q, method="inverted_cdf")) for q in (0.05, 0.25, 0.5, 0.75, 0.95)
                },
            }
        )
    dist, pair = _class_matrix(res, idx)
    details = {
        "mode": "paper",
        "m": int(idx.size),
        "seed": p.seed,
        "stratified": p.stratify,
        "min_interclass_distance": delta,
        "classes": [int(c) for c in res.labels],
        "class_min_distance": dist,
        "class_min_pair": pair,
        "offending_pairs": _pair_rows(res.top_pairs, y_np, idx),
        "bootstrap": details_boot,
        "n": int(n),
        "scale": _scale(X),
        "note": "paper-mode K_F is computed on a subsample, so it is <= the exact K_F and grows with m (docs/methods.md §2)",
    }
    progress(1.0, "done")
    return Result(
        value=value, ci=ci, ci_method="bootstrap percentile" if ci else None, details=details, warnings=warnings
    )


# --- exact mode ---------------------------------------------------------------------------------------------------


def _exact(X: torch.Tensor, y: torch.Tensor, p: LabelSharpnessParams, device, progress: ProgressFn) -> Result:
    y_np = y.numpy()
    warnings: list[str] = []
    res, reps, n_dup_rows, conflicts = exact_interclass(
        X,
        y,
        top_k=p.top_pairs,
        prune_dims=p.prune_dims,
        device=device,
        memory_budget_mb=p.memory_budget_mb,
        progress=progress,
    )
    delta = res.delta
    value = _k_from_delta(delta)
    if conflicts["groups"]:
        warnings.append(
            f"{conflicts['groups']} groups of identical samples carry different labels ({conflicts['pairs']} "
            "conflicting pairs, listed in details.conflicting_duplicates): the minimum inter-class distance is 0 "
            "and K_F is infinite"
        )
    if res.labels.size < 2:
        warnings.append("only one class is present: no differently labelled pair exists, so K_F = 0 by definition")
    dist, pair = _class_matrix(res, reps)
    details = {
        "mode": "exact",
        "min_interclass_distance": delta,
        "classes": [int(c) for c in res.labels],
        "class_min_distance": dist,
        "class_min_pair": pair,
        "offending_pairs": _pair_rows(res.top_pairs, y_np, reps),
        "conflicting_duplicates": conflicts,
        "duplicates": {"rows_collapsed": int(X.shape[0] - reps.size), "exact_duplicate_rows": int(n_dup_rows)},
        "n": int(X.shape[0]),
        "n_distinct_used": int(reps.size),
        "scale": _scale(X),
        "search": res.stats,
    }
    progress(1.0, "done")
    return Result(value=value, details=details, warnings=warnings)


def _cost(params: LabelSharpnessParams, n: int, d: int) -> float:
    """Registry ``cost``: exact mode, the n²/2 pairs at most (the pruning bound skips many); paper mode, the pairs
    of the subsample, once and per bootstrap resample."""
    if params.mode == "exact":
        return n * n / 2.0 * d
    m = min(params.m, n)
    return m * m / 2.0 * d * (1 + params.n_bootstrap)


@register(
    name="label_sharpness",
    version=VERSION,
    params=LabelSharpnessParams,
    summary="Label sharpness K_F = 1 / minimum distance between differently labelled samples (exact, all pairs)",
    needs_labels=True,
    min_samples=2,
    cost=_cost,
)
def label_sharpness(
    X: torch.Tensor,
    y: torch.Tensor | None,
    params: LabelSharpnessParams,
    *,
    device: torch.device,
    progress: ProgressFn = no_progress,
) -> Result:
    """K_F = 1/δ, δ the minimum distance between differently labelled samples (docs/methods.md §2); see the module
    docstring for the modes, the details and the handling of duplicates."""
    X, y = as_labelled(X, y, "label_sharpness")
    if params.mode == "paper":
        return _paper(X, y, params, torch.device(device), progress)
    return _exact(X, y, params, torch.device(device), progress)
