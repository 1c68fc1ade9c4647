"""The d_int90 sweep (Li et al. 2018 §2–3; docs/methods.md §4.2).

* :func:`train_models` trains S seeds of one model (direct or subspace) at once, each to its own plateau (see
  :mod:`estimators.subspace.training`), and returns each seed's outcome.
* :func:`bisection_walk` is the walk over d: a coarse log grid d_min·f^k until the mean over seeds reaches the
  threshold, then bisection (geometric midpoints, integer d) inside the bracketing pair; :func:`run_sweep` drives
  it with an ``evaluate(d)`` callback (the estimator replays it in :mod:`estimators.subspace.trials`).
* :func:`crossing` turns a curve {d: per-seed metrics} into the interpolated d_int90; :func:`bootstrap_ci`
  resamples the seeds at every d to give a percentile interval.

Definition (docs/methods.md §4.2): d_int90 is the smallest d whose mean-over-seeds performance reaches
τ = threshold × baseline. Li report the smallest *grid* d; we report that (``d_grid``) and, as the headline, the
crossing interpolated linearly in log d between the last d below τ and the first d at or above it, rounded up
to an integer (a dimension is an integer; with a bracket of adjacent integers this is the grid answer).

    >>> curve = {8: [0.1, 0.2], 16: [0.95, 0.97]}
    >>> crossing(curve, 0.9).d_grid
    16
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor, nn

from estimators.base import EstimatorError
from estimators.models.spec import TrainSpec
from estimators.subspace.training import (
    Protocol,
    TrainOutcome,
    evaluate_classifier,
    train_classifier,
)

# ---------------------------------------------------------------------------------------------------------------
# Training protocol (the loop itself lives in :mod:`estimators.subspace.training`)
# ---------------------------------------------------------------------------------------------------------------


def resolve_protocol(spec: TrainSpec, n_train: int, n_eval: int | None = None) -> Protocol:
    """Turn a TrainSpec (epochs, patience in scores) into a step-based :class:`Protocol` for ``n_train`` samples.

    ``max_steps`` = epochs × batches per epoch; ``eval_every`` defaults to one epoch clamped to 50–1000 steps (and
    never beyond the cap); ``min_delta`` is raised to 1/n_eval so that one more correct sample is not progress.
    """
    per_epoch = math.ceil(n_train / min(spec.batch_size, n_train))
    cap = spec.epochs * per_epoch
    every = spec.eval_every or min(max(per_epoch, 50), 1000)
    min_delta = max(spec.min_delta, 1.0 / n_eval) if n_eval else spec.min_delta
    return Protocol(
        optimizer=spec.optimizer,
        weight_decay=spec.weight_decay,
        momentum=spec.momentum,
        max_steps=cap,
        eval_every=min(every, cap),
        stop=spec.stop,
        patience=spec.patience,
        min_delta=min_delta,
        loss_tol=spec.loss_tol,
        lr_drops=spec.lr_drops,
    )


def train_models(
    model: nn.Module,
    trainable: Sequence[nn.Parameter],
    X_train: Tensor,
    y_train: Tensor,
    X_eval: Tensor,
    y_eval: Tensor,
    spec: TrainSpec,
    *,
    order_seeds: Sequence[int],
    lr: float | Sequence[float] | None = None,
    progress: Callable[[float], None] | None = None,
) -> TrainOutcome:
    """Train S seeds of a batched model with cross-entropy under ``spec`` (plateau stop or fixed epochs) and
    report per-seed accuracy on (X_eval, y_eval). ``lr`` (one value or one per seed) overrides ``spec.lr``.

    Each seed draws its own minibatch order (``order_seeds``); the loss is the sum over seeds of each seed's
    mean batch loss, so every seed's gradient (and, as the optimizers act element-wise, its update) is exactly
    what it would get if trained alone.
    """
    S = len(order_seeds)
    rates = (
        [spec.lr] * S if lr is None else ([float(lr)] * S if isinstance(lr, (int, float)) else [float(v) for v in lr])
    )
    protocol = resolve_protocol(spec, X_train.shape[0], X_eval.shape[0])
    return train_classifier(
        model,
        trainable,
        X_train,
        y_train,
        X_eval,
        y_eval,
        protocol,
        rates,
        batch_size=spec.batch_size,
        order_seeds=order_seeds,
        progress=progress,
    )


def accuracy(model: nn.Module, X: Tensor, y: Tensor, *, chunk: int = 2048) -> list[float]:
    """Per-seed classification accuracy of a batched model (``model(x, shared_input=True)`` → (S, B, C))."""
    return evaluate_classifier(model, X, y, chunk=chunk)[0].tolist()


# ---------------------------------------------------------------------------------------------------------------
# Crossing and bootstrap
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Crossing:
    value: float | None  # interpolated crossing rounded up to an integer; None when no d reaches the level
    d_grid: int | None  # smallest evaluated d whose mean reaches the level (Li's definition)
    d_below: int | None  # largest evaluated d below d_grid (None: the first d already passed)
    censored: str | None = None  # "below" (≤ smallest d) or "above" (> largest d)


def crossing(curve: Mapping[int, Sequence[float]], level: float) -> Crossing:
    """Interpolated crossing of ``level`` by the mean curve (see module docstring)."""
    ds = sorted(curve)
    means = [float(np.mean(curve[d])) for d in ds]
    return _crossing(np.asarray(ds, dtype=float), np.asarray(means), level)


def _crossing(ds: np.ndarray, means: np.ndarray, level: float) -> Crossing:
    passed = np.nonzero(means >= level)[0]
    if passed.size == 0:
        return Crossing(None, None, int(ds[-1]) if ds.size else None, "above")
    i = int(passed[0])
    hi = int(ds[i])
    if i == 0:
        return Crossing(float(hi), hi, None, "below")
    lo = int(ds[i - 1])
    m_lo, m_hi = means[i - 1], means[i]
    t = 1.0 if m_hi <= m_lo else (level - m_lo) / (m_hi - m_lo)
    t = min(max(t, 0.0), 1.0)
    d_star = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
    value = float(min(hi, max(lo + 1, math.ceil(d_star - 1e-9))))
    return Crossing(value, hi, lo)


def bootstrap_ci(
    curve: Mapping[int, Sequence[float]], level: float, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile interval of the interpolated crossing when the seeds at every d are resampled with replacement.

    A draw in which no d reaches the level counts as +∞ (so the upper end can be ``inf``).
    """
    rng = np.random.default_rng(seed)
    ds = np.asarray(sorted(curve), dtype=float)
    vals = [np.asarray(curve[int(d)], dtype=float) for d in ds]
    draws = np.empty(n_boot)
    for b in range(n_boot):
        means = np.array([v[rng.integers(0, v.size, v.size)].mean() for v in vals])
        c = _crossing(ds, means, level)
        draws[b] = math.inf if c.value is None else c.value
    draws.sort()  # order statistics, no interpolation: safe with +∞ draws
    lo = draws[int(math.floor(alpha / 2 * (n_boot - 1)))]
    hi = draws[int(math.ceil((1 - alpha / 2) * (n_boot - 1)))]
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------------------
# Sweep over d
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    curve: dict[int, list[float]] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # d in evaluation order
    crossing: Crossing | None = None


def coarse_grid(d_min: int, max_d: int, factor: float) -> list[int]:
    """d_min, d_min·f, d_min·f², … (rounded, distinct), up to and including max_d."""
    if d_min < 1 or max_d < d_min or factor <= 1:
        raise EstimatorError(f"bad grid: need 1 ≤ d_min ≤ max_d and factor > 1 (got {d_min}, {max_d}, {factor})")
    grid: list[int] = []
    x = float(d_min)
    while round(x) < max_d:
        if not grid or round(x) > grid[-1]:
            grid.append(int(round(x)))
        x *= factor
    grid.append(int(max_d))
    return grid


def bisection_walk(grid: Sequence[int], bisect_steps: int) -> Generator[int, bool, None]:
    """The sequential sweep as a generator: yields the next d and is sent whether its mean passed the level.

    Coarse grid upward until a d passes, then ``bisect_steps`` geometric bisections (integer midpoints) inside
    the bracketing pair; nothing to bisect when the first d passes or none does.
    """
    lo: int | None = None
    hi: int | None = None
    for d in grid:
        if (yield d):
            hi = d
            break
        lo = d
    if hi is None or lo is None:
        return
    for _ in range(bisect_steps):
        if hi - lo <= 1:
            return
        mid = min(max(int(round(math.sqrt(lo * hi))), lo + 1), hi - 1)
        if (yield mid):
            hi = mid
        else:
            lo = mid


def run_sweep(
    evaluate: Callable[[int], Sequence[float]],
    level: float,
    *,
    d_min: int,
    max_d: int,
    grid_factor: float = 2.0,
    bisect_steps: int = 3,
    on_done: Callable[[int, Sequence[float]], None] | None = None,
) -> SweepOutcome:
    """Coarse log grid upward until the mean reaches ``level``, then ``bisect_steps`` geometric bisections
    (:func:`bisection_walk`, the walk the estimator's planner replays).

    ``evaluate(d)`` trains every seed at dimension d and returns the per-seed metrics.
    """
    out = SweepOutcome()
    walk = bisection_walk(coarse_grid(d_min, max_d, grid_factor), bisect_steps)
    d: int | None = next(walk)
    while d is not None:
        t = time.perf_counter()
        vals = [float(v) for v in evaluate(d)]
        out.seconds[d] = time.perf_counter() - t
        out.curve[d] = vals
        out.order.append(d)
        if on_done is not None:
            on_done(d, vals)
        try:
            d = walk.send(float(np.mean(vals)) >= level)
        except StopIteration:
            d = None
    out.crossing = crossing(out.curve, level)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Convergence of the crossing
# ---------------------------------------------------------------------------------------------------------------


def assess_bound(
    cross: Crossing, converged: Mapping[int, Sequence[bool | None]], baseline_converged: Sequence[bool | None]
) -> tuple[str, list[int]]:
    """Is the d_int90 of ``cross`` exact, or only a bound because trials it rests on stopped unconverged?

    More training only raises a trial's metric (its kept state is its best score), so:

    * an unconverged trial at some d ≤ d_grid could pass the level with more budget: the crossing could move
      down, and the value is an **upper** bound (d_int90 ≤ value). With no d passing (censored above) every
      unconverged trial matters, and the ">" statement is no bound at all;
    * an unconverged baseline could rise, and the level with it: the crossing could move up, a **lower** bound;
    * both at once: **unknown**. ``None`` entries (a fixed budget, convergence not assessed) give "unassessed".

    Returns (kind, the d whose unconverged trials the crossing rests on).
    """
    flags = [c for v in converged.values() for c in v] + list(baseline_converged)
    if any(c is None for c in flags):
        return "unassessed", []
    rests_on = sorted(d for d, v in converged.items() if (cross.d_grid is None or d <= cross.d_grid) and not all(v))
    sub_ok, base_ok = not rests_on, all(baseline_converged)
    if cross.censored == "below":  # "≤ d_min" holds whatever the small trials did
        sub_ok = True
    if sub_ok and base_ok:
        return "exact", rests_on
    if not sub_ok and base_ok and cross.d_grid is not None:
        return "upper", rests_on
    if sub_ok and not base_ok:
        return "lower", rests_on
    return "unknown", rests_on
