"""Intrinsic dimension of the data (docs/methods.md §1): ``mle``, ``twonn`` and ``gride``.

Each module registers one estimator (``estimators.registry``) and exposes a plain function:
:func:`mle_id`, :func:`twonn_id`, :func:`gride_id`. All neighbour work goes through
:func:`estimators.knn.kneighbors`; exact duplicate rows are removed first and degenerate (tied) points are
dropped and counted (``estimators.id._common``).
"""

from estimators.id.gride import gride_id
from estimators.id.mle import mle_id
from estimators.id.twonn import twonn_id

__all__ = ["gride_id", "mle_id", "twonn_id"]
