"""Shared contracts of every estimator (docs/methods.md §0).

An estimator is a pure function ``fn(X, y, params, *, device, progress) -> Result``:

* ``X``: ``torch.Tensor`` of shape (N, D) (images arrive flattened), float32 or float64, on CPU.
  The estimator moves it to ``device`` itself.
* ``y``: ``torch.Tensor`` (N,) int64 class indices, or ``None``.
* ``params``: an instance of the estimator's ``Params`` subclass (validated, defaults from docs/methods.md).
* ``device``: a ``torch.device`` already resolved by :func:`estimators.device.resolve_device`.
* ``progress``: ``progress(fraction: float, stage: str)``; a plain callback, estimators never know about Celery.

Bad input raises :class:`EstimatorError` whose message says what was wrong and how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, stage: str) -> None:  # noqa: ARG001 - the null callback
    """A progress callback that ignores every report."""


def scaled_progress(progress: ProgressFn, start: float, stop: float) -> ProgressFn:
    """Map a sub-task's progress in [0, 1] onto [start, stop] of the caller's progress."""

    def report(fraction: float, stage: str) -> None:
        progress(start + (stop - start) * min(max(fraction, 0.0), 1.0), stage)

    return report


class EstimatorError(ValueError):
    """Input an estimator cannot work with. The message names the problem and the fix."""


class Params(BaseModel):
    """Base class of every estimator's params model: unknown keys are errors, and so are NaN and ±inf (no
    size, count or threshold is infinite). Every size, count and epoch field has an upper bound (issue 15), so a
    request cannot ask for unbounded memory or time; the bounds shared by several estimators are below."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both accept 0..2**32-1
MAX_NEIGHBOURS = 10_000  # k, ranks and neighbour ladders
MAX_MEMORY_BUDGET_MB = 1 << 20  # 1 TiB; the operator's TASKGAUGE_MEMORY_BUDGET_MB caps it further (taskgauge.pipeline)
MAX_SUBSAMPLE = 100_000_000  # anchor and subsample counts


@dataclass
class Result:
    """What an estimator returns (report schema, docs/methods.md §0)."""

    value: float | None
    ci: tuple[float, float] | None = None
    ci_method: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class EstimatorFn(Protocol):
    def __call__(
        self,
        X: Any,
        y: Any,
        params: Any,
        *,
        device: Any,
        progress: ProgressFn,
    ) -> Result: ...


def json_number(x: float | None) -> float | str | None:
    """A float for a JSON report: non-finite values become the strings "inf", "-inf", "nan".

    JSON has no infinities; ``json.dumps`` would write ``Infinity``, which strict parsers (browsers'
    ``JSON.parse``, PostgreSQL's jsonb) reject. The report schema therefore spells them as strings.
    """
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x
