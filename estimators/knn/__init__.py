"""The exact kNN engine (docs/methods.md §0, §7): every neighbour and pair search of taskgauge goes through here.

- :mod:`estimators.knn.engine`: :func:`kneighbors`, exact float64 neighbours with a float32 GEMM for speed;
- :mod:`estimators.knn.pairs`: the exact inter-class closest pairs behind ``label_sharpness`` and δ;
- :func:`exact_duplicates`: duplicate rows, found once.
"""

from estimators.knn.engine import (
    Duplicates,
    KNNResult,
    LowerBoundEmbedding,
    exact_distances,
    exact_duplicates,
    kneighbors,
    lower_bound_embedding,
    release_freed_memory,
)

__all__ = [
    "Duplicates",
    "KNNResult",
    "LowerBoundEmbedding",
    "exact_distances",
    "exact_duplicates",
    "kneighbors",
    "lower_bound_embedding",
    "release_freed_memory",
]
