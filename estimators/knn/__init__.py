"""The exact kNN engine (docs/methods.md §0, §7): every neighbour and pair search of taskgauge goes through here.

- :mod:`estimators.knn.engine`: :func:`kneighbors`, exact float64 neighbours with a float32 GEMM for speed;
- :mod:`estimators.knn.pairs`: the exact inter-class closest pairs behind ``label_sharpness`` and δ;
- :mod:`estimators.knn.known`: :func:`known_neighbours`, a table computed elsewhere (the parts of a split search,
  :func:`plan_parts`/:func:`bounds_part`/:func:`kneighbors_part`/:func:`merge_parts`) handed to every search on
  the same data;
- :mod:`estimators.knn.tree`: a k-d tree proposing the candidates of low-dimensional data, when it measures
  faster than the brute force;
- :mod:`estimators.knn.distinct`: :func:`distinct_kneighbors`, the neighbours of the distinct rows without a
  de-duplicated copy of the data;
- :mod:`estimators.knn.duplicates`: :func:`exact_duplicates`, duplicate rows, found once (:func:`known_duplicates`
  hands a known answer to the estimators);
- :mod:`estimators.knn.memory`: :func:`release_freed_memory`.
"""

from estimators.knn.distinct import distinct_kneighbors, distinct_rows
from estimators.knn.duplicates import Duplicates, exact_duplicates, known_duplicates
from estimators.knn.engine import (
    KNNBounds,
    KNNPart,
    KNNPlan,
    KNNResult,
    LowerBoundEmbedding,
    bounds_part,
    exact_distances,
    kneighbors,
    kneighbors_part,
    lower_bound_embedding,
    merge_parts,
    plan_parts,
)
from estimators.knn.known import known_neighbours
from estimators.knn.memory import release_freed_memory

__all__ = [
    "Duplicates",
    "KNNBounds",
    "KNNPart",
    "KNNPlan",
    "KNNResult",
    "LowerBoundEmbedding",
    "bounds_part",
    "distinct_kneighbors",
    "distinct_rows",
    "exact_distances",
    "exact_duplicates",
    "kneighbors",
    "kneighbors_part",
    "known_neighbours",
    "known_duplicates",
    "lower_bound_embedding",
    "merge_parts",
    "plan_parts",
    "release_freed_memory",
]
