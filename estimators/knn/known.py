"""A neighbour table computed elsewhere, handed to every ``kneighbors`` call on the same data.

A worker that assembled the exact kNN of a large data set from the parts other workers computed
(:func:`estimators.knn.merge_parts`) runs the estimators with the table registered::

    with known_neighbours(X, table.distances, table.indices):
        mle(X, ...); twonn(X, ...); gride(X, ...)   # their kneighbors(X, k) reads the table

Inside the ``with`` block, :func:`estimators.knn.kneighbors` of a full self-query (``queries`` None, any
``query_index``) on a reference with the same shape, dtype and values as ``X`` (the same tensor, or an equal one:
an estimator's de-duplicated copy of the same rows) and ``k`` no larger than the table's returns the table's first
``k`` columns (of the ``query_index`` rows) instead of searching. The answer is the same: the exact kNN of equal
data is the same table, ties broken by the smaller index, and the first k columns of the exact k' > k neighbours
are the exact k neighbours. Outside a block nothing is looked up.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

#: registered (data, version, distances, indices) of the active known_neighbours blocks, innermost last
_known: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
_lock = threading.Lock()


@contextlib.contextmanager
def known_neighbours(X: torch.Tensor, distances: torch.Tensor, indices: torch.Tensor) -> Iterator[None]:
    """Within the block, ``kneighbors`` of data equal to ``X`` reads the exact table ``(distances, indices)``
    (module docstring); both (n, k), float64 and int64, as ``kneighbors(X, k)`` returns them."""
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise TypeError("known_neighbours: X must be a 2-D torch.Tensor (the data the table was computed on)")
    n = int(X.shape[0])
    if (
        distances.dim() != 2
        or distances.shape != indices.shape
        or distances.shape[0] != n
        or distances.dtype != torch.float64
        or indices.dtype != torch.int64
    ):
        raise ValueError(
            f"known_neighbours: a table of shape {tuple(distances.shape)}/{tuple(indices.shape)} "
            f"({distances.dtype}, {indices.dtype}) does not describe {n} rows as float64 distances and int64 indices"
        )
    entry = (X, X._version, distances.cpu(), indices.cpu())  # noqa: SLF001 - torch's in-place write counter
    with _lock:
        _known.append(entry)
    try:
        yield
    finally:
        with _lock:
            for i in range(len(_known) - 1, -1, -1):
                if _known[i] is entry:
                    del _known[i]
                    break


def active() -> bool:
    """Whether a table is registered (a ``known_neighbours`` block is open in this process)."""
    with _lock:
        return bool(_known)


def _same(t: torch.Tensor, version: int, X: torch.Tensor) -> bool:
    if t.shape != X.shape or t.dtype != X.dtype or X.device.type != "cpu":
        return False
    if t.data_ptr() == X.data_ptr() and t.stride() == X.stride() and t._version == version == X._version:  # noqa: SLF001
        return True
    return t._version == version and bool(torch.equal(t, X))  # noqa: SLF001


def lookup(
    reference: torch.Tensor, k: int, query_index: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The registered table's answer to the full self-query ``kneighbors(reference, k, query_index=…)``, or None."""
    with _lock:
        entries = list(reversed(_known))
    for t, version, d, i in entries:
        if k <= d.shape[1] and _same(t, version, reference):
            if query_index is not None:
                qi = query_index.cpu().long()
                d, i = d.index_select(0, qi), i.index_select(0, qi)
            return d[:, :k].contiguous(), i[:, :k].contiguous()
    return None
