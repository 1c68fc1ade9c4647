"""Guards shared by the intrinsic-dimension estimators (docs/methods.md §0, §1.1, §1.2, §1.5).

Every ID estimator works on the *distinct* points of the data set:

1. the input is checked (2-D after flattening, numeric, finite, enough rows);
2. exact duplicate rows are removed before any neighbour search and counted (a zero neighbour distance
   would make ln(T_k/T_1) infinite and the pooled estimate 0, docs/methods.md §1.1 "Zero distances");
3. the estimator then drops, and counts, the points whose neighbour distances are degenerate for its
   statistic (all k distances equal for the MLE, r1 = r2 for TwoNN, T_{n1} = T_{n2} for Gride). Nothing
   is ever turned silently into 0, inf or NaN.

Nothing here does I/O; the helpers return plain data and warning strings for :class:`estimators.base.Result`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from estimators.base import EstimatorError
from estimators.knn import exact_duplicates
from estimators.validation import as_matrix

#: quantiles reported for per-point estimates
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class Prepared:
    """The distinct points an estimator works on, and what was removed to get them."""

    X: torch.Tensor  # (n_unique, D) on CPU, original floating dtype (integers become float64)
    n_input: int
    duplicates_removed: int
    warnings: list[str] = field(default_factory=list)

    @property
    def n_unique(self) -> int:
        return int(self.X.shape[0])


def prepare(X, *, estimator: str, min_points: int) -> Prepared:
    """Validate ``X`` and remove exact duplicate rows (docs/methods.md §0).

    Raises :class:`EstimatorError` for non-numeric, non-finite or too-small input. ``min_points`` is the number
    of *distinct* points the estimator needs.

    >>> p = prepare(torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), estimator="demo", min_points=3)
    >>> p.n_unique, p.duplicates_removed
    (3, 1)
    """
    X = as_matrix(X, estimator)
    n = int(X.shape[0])
    warnings: list[str] = []
    dup = exact_duplicates(X)
    removed = dup.n_removed
    if removed:
        X = X[torch.from_numpy(np.asarray(dup.unique_index, dtype=np.int64))]
        warnings.append(
            f"{removed} exact duplicate rows removed before the neighbour search (docs/methods.md §0); "
            f"the estimate uses the {X.shape[0]} distinct points"
        )
    if X.shape[0] < min_points:
        raise EstimatorError(
            f"{estimator}: needs at least {min_points} distinct points but the data has {X.shape[0]}"
            + (f" ({n} rows, {removed} exact duplicates removed)" if removed else "")
            + "; add data or lower the neighbour count"
        )
    return Prepared(X=X.contiguous(), n_input=n, duplicates_removed=removed, warnings=warnings)


def to_numpy64(t) -> np.ndarray:
    """A kNN result tensor as a float64 numpy array on the CPU."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().to(torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def quantiles(values: np.ndarray) -> dict[str, float]:
    """Summary of per-point estimates: min, the :data:`QUANTILES`, max (numpy 'linear' interpolation)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    out = {"min": float(values.min())}
    for q, v in zip(QUANTILES, np.quantile(values, QUANTILES)):
        out[f"q{int(round(q * 100)):02d}"] = float(v)
    out["max"] = float(values.max())
    return out


def dropped_warning(count: int, total: int, what: str, estimator: str) -> str:
    """The warning text for points dropped by a degeneracy guard."""
    text = (
        f"{count} of {total} points dropped because {what} (ties, e.g. quantised or lattice data; "
        f"docs/methods.md §1.1 'Ties'); the {estimator} estimate uses the remaining {total - count}"
    )
    if 2 * count > total:
        text += (
            "; more than half the points are tied, so the estimate rests on an atypical minority: treat it with caution"
        )
    return text


def too_few_error(estimator: str, remaining: int, needed: int, total: int, reason: str) -> EstimatorError:
    """The error raised when the guards leave too few points."""
    return EstimatorError(
        f"{estimator}: only {remaining} of {total} distinct points remain after dropping {reason}; at least "
        f"{needed} are needed. The data are too coarsely quantised (many equal neighbour distances) for this "
        "estimator: use data with more distinct values, or a larger neighbour count/rank"
    )
