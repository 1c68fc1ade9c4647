"""Input checks shared by the estimators that take a data matrix (METHODS §0)."""

from __future__ import annotations

import math

import numpy as np
import torch

from estimators.base import EstimatorError


def all_finite(X: torch.Tensor) -> bool:
    """True when no value is NaN or ±Inf: one pass, no temporary (NaN propagates through min and max)."""
    if X.numel() == 0:
        return True
    lo, hi = torch.aminmax(X)
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


def as_matrix(X, name: str) -> torch.Tensor:
    """``X`` as a CPU tensor of shape (N, D): images are flattened, integers become float64, the original
    floating dtype is kept. Raises :class:`EstimatorError` for non-tensors, fewer than 2 dimensions,
    non-real dtypes, zero features and NaN/Inf (with their count and the first bad row).

    >>> as_matrix(np.zeros((3, 2, 2), dtype=np.int64), "demo").shape
    torch.Size([3, 4])
    """
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    if not isinstance(X, torch.Tensor):
        raise EstimatorError(f"{name}: X must be a torch.Tensor or numpy array of shape (N, D), got {type(X).__name__}")
    if X.dim() < 2:
        raise EstimatorError(
            f"{name}: X must have shape (N, D) with one row per sample, got shape {tuple(X.shape)}; "
            "reshape a single feature to (N, 1)"
        )
    if X.dtype == torch.bool or X.is_complex():
        raise EstimatorError(f"{name}: X must be real-valued numbers, got dtype {X.dtype}")
    X = X.detach().cpu().reshape(X.shape[0], -1)
    if not X.is_floating_point():
        X = X.to(torch.float64)
    if X.shape[1] == 0:
        raise EstimatorError(f"{name}: X has no features (shape {tuple(X.shape)})")
    if not all_finite(X):
        bad = ~torch.isfinite(X)  # only on the error path: count and locate the bad values
        rows = torch.nonzero(bad.any(dim=1)).flatten()
        raise EstimatorError(
            f"{name}: X contains {int(bad.sum())} NaN/Inf values in {rows.numel()} rows "
            f"(first bad row {int(rows[0])}); remove or impute them first"
        )
    return X
