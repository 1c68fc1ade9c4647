"""Input checks shared by the estimators that take a data matrix (docs/methods.md §0)."""

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


def as_matrix(X, name: str, *, images: bool = False, what: str = "X") -> torch.Tensor:
    """``X`` as a CPU tensor of shape (N, D): images are flattened (kept as (N, C, H, W) when ``images`` is
    true), integers become float64, the original floating dtype is kept. Raises :class:`EstimatorError` for non-tensors, fewer than 2 dimensions,
    non-real dtypes, zero features and NaN/Inf (with their count and the first bad row).

    >>> as_matrix(np.zeros((3, 2, 2), dtype=np.int64), "demo").shape
    torch.Size([3, 4])
    """
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    if not isinstance(X, torch.Tensor):
        raise EstimatorError(
            f"{name}: {what} must be a torch.Tensor or numpy array of shape (N, D), got {type(X).__name__}"
        )
    if X.dim() < 2:
        raise EstimatorError(
            f"{name}: {what} must have shape (N, D) with one row per sample, got shape {tuple(X.shape)}; "
            "reshape a single feature to (N, 1)"
        )
    if X.dtype == torch.bool or X.is_complex():
        raise EstimatorError(f"{name}: {what} must be real-valued numbers, got dtype {X.dtype}")
    if images and X.dim() not in (2, 4):
        raise EstimatorError(f"{name}: X must be N×D or N×C×H×W, got shape {tuple(X.shape)}")
    X = X.detach().cpu()
    if not (images and X.dim() == 4):
        X = X.reshape(X.shape[0], -1)
    if not X.is_floating_point():
        X = X.to(torch.float64)
    if X.shape[1] == 0:
        raise EstimatorError(f"{name}: {what} has no features (shape {tuple(X.shape)})")
    if not all_finite(X):
        bad = ~torch.isfinite(X)  # only on the error path: count and locate the bad values
        rows = torch.nonzero(bad.any(dim=1)).flatten()
        raise EstimatorError(
            f"{name}: {what} contains NaN or Inf values: {int(bad.sum())} NaN/Inf values in {rows.numel()} rows "
            f"(first bad row {int(rows[0])}, i.e. sample {int(rows[0])} counting from 0); remove or impute them first"
        )
    return X


def as_labelled(X, y, name: str, *, images: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``X`` as :func:`as_matrix` gives it and ``y`` as a CPU int64 vector of one class index per row; raises
    :class:`EstimatorError` when labels are missing, not integers or not one per row."""
    if y is None:
        raise EstimatorError(
            f"{name} needs class labels but none were given; upload labels (an array 'y' in the .npz "
            "or a label column) or drop this estimator"
        )
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    X = as_matrix(X, name, images=images)
    y = y.detach().cpu().reshape(-1)
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise EstimatorError(f"{name}: y must hold integer class indices, got dtype {y.dtype}")
    if y.shape[0] != X.shape[0]:
        raise EstimatorError(f"{name}: X has {X.shape[0]} rows but y has {y.shape[0]} labels; they must match")
    if X.shape[0] < 2:
        raise EstimatorError(f"{name} needs at least 2 samples, got {X.shape[0]}")
    return X, y.to(torch.long)
