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
from estimators.knn import Duplicates, KNNResult, distinct_kneighbors, distinct_rows, exact_duplicates
from estimators.knn.distinct import searches_in_place
from estimators.validation import as_matrix

#: quantiles reported for per-point estimates
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class Prepared:
    """The distinct points an estimator works on, and what was removed to get them.

    ``source``: the checked input (n_input, D) on the CPU, original floating dtype (integers become float64);
    ``duplicates``: its exact duplicate rows. The distinct points are the first row of each group, in row order:
    :attr:`X` as one tensor (a copy, made on first use, when rows were removed), and :meth:`kneighbors` searches them
    without that copy where it can (:func:`estimators.knn.distinct_kneighbors`)."""

    source: torch.Tensor
    duplicates: Duplicates
    warnings: list[str] = field(default_factory=list)
    _distinct: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n_input(self) -> int:
        return int(self.source.shape[0])

    @property
    def duplicates_removed(self) -> int:
        return self.duplicates.n_removed

    @property
    def n_unique(self) -> int:
        return self.n_input - self.duplicates_removed

    @property
    def X(self) -> torch.Tensor:
        """The distinct points as one (n_unique, D) tensor: ``source`` itself, or a copy when rows were removed."""
        if self._distinct is None:
            self._distinct = distinct_rows(self.source, self.duplicates)
        return self._distinct

    def kneighbors(self, k: int, **kwargs) -> KNNResult:
        """``kneighbors(self.X, k, **kwargs)`` (the same answer, bit for bit), without copying the data when only a
        few rows were removed (:func:`estimators.knn.distinct_kneighbors`). When the copy is searched, it is the one
        :attr:`X` keeps (twonn's decimation reads it again), not a second one."""
        if self._distinct is None and not searches_in_place(self.duplicates, k):
            self._distinct = distinct_rows(self.source, self.duplicates)
        return distinct_kneighbors(self.source, self.duplicates, k, distinct=self._distinct, **kwargs)


def prepare(X, *, estimator: str, min_points: int) -> Prepared:
    """Validate ``X`` and find its exact duplicate rows, which the estimators leave out (docs/methods.md §0).

    Raises :class:`EstimatorError` for non-numeric, non-finite or too-small input. ``min_points`` is the number
    of *distinct* points the estimator needs.

    >>> p = prepare(torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), estimator="demo", min_points=3)
    >>> p.n_unique, p.duplicates_removed, p.X.tolist()
    (3, 1, [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    """
    X = as_matrix(X, estimator).contiguous()
    n = int(X.shape[0])
    warnings: list[str] = []
    dup = exact_duplicates(X)
    removed = dup.n_removed
    if removed:
        warnings.append(
            f"{removed} exact duplicate rows removed before the neighbour search (docs/methods.md §0); "
            f"the estimate uses the {n - removed} distinct points"
        )
    if n - removed < min_points:
        raise EstimatorError(
            f"{estimator}: needs at least {min_points} distinct points but the data has {n - removed}"
            + (f" ({n} rows, {removed} exact duplicates removed)" if removed else "")
            + "; add data or lower the neighbour count"
        )
    return Prepared(source=X, duplicates=dup, warnings=warnings)


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
