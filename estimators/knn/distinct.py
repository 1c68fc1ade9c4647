"""The exact kNN of a data set's *distinct* rows (docs/methods.md §0) without a de-duplicated copy of the data.

The ID estimators work on the distinct points: each distinct point's k nearest *other distinct* points. The direct
way gathers the distinct rows into a new tensor and searches it; on float64 data that copy is as large as the data,
and it is made although most real data sets have no duplicates or only a handful (8 among 15,100 sentence
embeddings of the fortunes), which doubles the memory the search needs.

:func:`distinct_kneighbors` searches the data as given instead when the surplus rows (the copies beyond each
group's first row) are few (s <= k): the exact k + s nearest rows of a distinct point (itself excluded) hold at most
s surplus rows, hence at least k first occurrences, and the first k of those are its k nearest distinct points, in
the same (distance, index) order: the first occurrences keep their relative order, and each pair's distance is the
same float64 number (:func:`estimators.knn.exact_distances`, a function of the two rows' values). The answer is bit
for bit that of the search on the copy; the search costs a little more (k + s neighbours: 3–8% on 15,100 × 384
MiniLM embeddings with 8 surplus rows, bench/RESULTS.md) and its memory stays the data's. (Searching again, with
k + s, only the rows whose k nearest hold a copy was tried: that search of a few query rows builds the float32
frame of the whole data, which costs the memory saved.) With many duplicates (s > k) the copy is searched.
"""

from __future__ import annotations

import numpy as np
import torch

from estimators.knn import known
from estimators.knn.duplicates import Duplicates
from estimators.knn.engine import KNNResult, kneighbors


def distinct_rows(X: torch.Tensor, dup: Duplicates) -> torch.Tensor:
    """The distinct rows of ``X`` (the first row of each group, in row order: the rows the ID estimators keep) as one
    tensor: ``X`` itself when it has no duplicates, else a copy."""
    if dup.n_removed == 0:
        return X
    return X.index_select(0, torch.from_numpy(np.asarray(dup.unique_index, dtype=np.int64)))


def searches_in_place(dup: Duplicates, k: int) -> bool:
    """Whether :func:`distinct_kneighbors` searches the data as given (True), not a de-duplicated copy."""
    s = dup.n_removed
    return s == 0 or (s <= k and k + s <= dup.inverse.shape[0] - 1 and not known.active())


def distinct_kneighbors(
    X: torch.Tensor,
    dup: Duplicates,
    k: int,
    *,
    query_index: torch.Tensor | None = None,
    distinct: torch.Tensor | None = None,
    **kwargs,
) -> KNNResult:
    """``kneighbors(distinct_rows(X, dup), k, query_index=query_index, **kwargs)``, bit for bit (module
    docstring), with the indices and ``query_index`` in the distinct rows' numbering, searching ``X`` itself when it
    has at most k surplus rows. ``dup`` must be ``exact_duplicates(X)``; ``distinct``: ``distinct_rows(X, dup)`` when
    the caller already holds it (searched instead of a new copy when the copy is searched). A registered table
    (:func:`estimators.knn.known_neighbours`, computed for the distinct rows) is read as before."""
    s = dup.n_removed
    if not searches_in_place(dup, k):
        Xu = distinct if distinct is not None else distinct_rows(X, dup)
        return kneighbors(Xu, k, query_index=query_index, **kwargs)
    if s == 0:
        r = kneighbors(X, k, query_index=query_index, **kwargs)
        r.stats["surplus_rows"] = 0
        return r
    first = torch.from_numpy(np.asarray(dup.unique_index, dtype=np.int64))
    inverse = torch.from_numpy(np.asarray(dup.inverse, dtype=np.int64))
    is_first = torch.zeros(X.shape[0], dtype=torch.bool)
    is_first[first] = True
    if query_index is None:  # the full self-query keeps the symmetric search; the s surplus rows' lists are dropped
        r = kneighbors(X, k + s, **kwargs)
        d, i = r.distances.index_select(0, first), r.indices.index_select(0, first)
    else:
        qi = torch.as_tensor(query_index).long()
        if qi.dim() != 1 or (qi.numel() and (int(qi.min()) < 0 or int(qi.max()) >= first.numel())):
            # the same message kneighbors gives for the copy
            return kneighbors(distinct_rows(X, dup), k, query_index=query_index, **kwargs)
        r = kneighbors(X, k + s, query_index=first.index_select(0, qi), **kwargs)
        d, i = r.distances, r.indices
    keep = is_first[i]  # the query itself is excluded by index; its copies are surplus rows, dropped with the others
    keep &= torch.cumsum(keep, 1) <= k
    if not bool((keep.sum(1) == k).all()):  # cannot happen: at most s of the k + s rows are surplus
        raise RuntimeError("distinct_kneighbors: internal error, a row has fewer than k distinct neighbours")
    q = d.shape[0]
    stats = {**r.stats, "surplus_rows": s, "k_searched": k + s}
    return KNNResult(
        distances=d[keep].view(q, k),
        indices=inverse.index_select(0, i[keep]).view(q, k),
        query_index=torch.arange(q) if query_index is None else qi,
        stats=stats,
    )
