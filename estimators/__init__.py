"""taskgauge estimators: pure PyTorch/NumPy functions (no I/O, no DB, no Celery, no FastAPI).

Every estimator is registered in :mod:`estimators.registry` (docs/methods.md §0) and returns a
:class:`estimators.base.Result`.
"""

from estimators.base import EstimatorError, Params, Result

__all__ = ["EstimatorError", "Params", "Result"]
