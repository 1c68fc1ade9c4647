"""taskgauge: how hard is this supervised task? The domain of the service and its public Python API.

>>> import numpy as np, taskgauge
>>> X = np.random.default_rng(0).normal(size=(500, 3)) @ np.random.default_rng(1).normal(size=(3, 10))
>>> round(taskgauge.MLE().fit(X).dimension_)
3

The estimator classes (scikit-learn style: ``fit`` → ``dimension_``; ``get_params``/``set_params``/``clone``) and
:func:`analyse` (several estimators → a :class:`Report`) live in :mod:`taskgauge.api`; they are imported on first
use, so ``import taskgauge.settings`` (what the services need) stays cheap.
"""

from __future__ import annotations

from typing import Any

_API = ("MLE", "TwoNN", "Gride", "LabelSharpness", "InductiveBias", "RegisteredEstimator", "Report", "analyse")

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        from taskgauge import api

        return getattr(api, name)
    raise AttributeError(f"module 'taskgauge' has no attribute {name!r}")
