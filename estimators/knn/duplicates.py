"""Exact duplicate rows (docs/methods.md §0), found once per analysis.

:func:`exact_duplicates` hashes rows and compares colliding rows exactly. A caller that already knows the duplicates
of a tensor (the pipeline computes them for the report's dataset section) hands them to every estimator that runs
on that tensor with :func:`known_duplicates`::

    dup = exact_duplicates(X)
    with known_duplicates(X, dup):
        mle(X, ...); twonn(X, ...)   # their exact_duplicates(X) returns dup without hashing X again

Inside the ``with`` block, :func:`exact_duplicates` returns the registered answer for ``X`` itself or any view of
it with the same data pointer, shape, strides and dtype (``as_matrix`` of a 2-D tensor is such a view), as long as
torch's version counter of ``X`` has not moved (no in-place torch write since). Writes that bypass torch (through
the numpy array a tensor was made from) are not seen: do not modify the data inside the block. Outside a block
nothing is cached.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

#: registered (tensor, version, Duplicates) of the active known_duplicates blocks, innermost last
_known: list[tuple[torch.Tensor, int, Duplicates]] = []
_known_lock = threading.Lock()


@dataclass
class Duplicates:
    """Exact duplicate rows. ``unique_index``: first occurrence of each distinct row (ascending);
    ``inverse``: (N,) position in ``unique_index`` of every row; ``groups``: rows of each group of size > 1
    (members ascending, groups ordered by first occurrence)."""

    unique_index: np.ndarray
    inverse: np.ndarray
    groups: list[list[int]]

    @property
    def n_removed(self) -> int:
        return int(self.inverse.shape[0] - self.unique_index.shape[0])


# --------------------------------------------------------------------------------------------------------------
# exact duplicates


def exact_duplicates(X: torch.Tensor | np.ndarray) -> Duplicates:
    """Find rows that are exactly equal (bitwise after mapping -0.0 to 0.0).

    Rows are hashed (their bytes as 64-bit words, multiplied by fixed random odd constants and summed modulo
    2^64); rows sharing a hash are then compared exactly, so a hash collision can never merge distinct rows.
    Cost O(N·D), versus the O(N·D·log N) lexicographic sort of ``np.unique(axis=0)``.

    >>> d = exact_duplicates(np.array([[1.0, 2.0], [0.0, 1.0], [1.0, 2.0], [-0.0, 1.0]]))
    >>> d.unique_index.tolist(), d.inverse.tolist(), d.groups, d.n_removed
    ([0, 1], [0, 1, 0, 1], [[0, 2], [1, 3]], 2)
    """
    if isinstance(X, torch.Tensor):
        hit = _lookup(X)
        if hit is not None:
            return hit
    a = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    n = int(a.shape[0])
    a = np.ascontiguousarray(a.reshape(n, int(np.prod(a.shape[1:], dtype=np.int64))))
    if a.dtype.kind not in "fiub":
        a = a.astype(np.float64)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Duplicates(unique_index=empty, inverse=empty, groups=[])

    def words(rows) -> np.ndarray:
        """Canonical 64-bit words of some rows (-0.0 -> 0.0, bytes zero-padded to a multiple of 8)."""
        c = a[rows]
        if c.dtype.kind == "f":
            c = c + c.dtype.type(0.0)  # -0.0 -> 0.0 (NaN payloads are kept bitwise)
        raw = np.ascontiguousarray(c).view(np.uint8).reshape(c.shape[0], -1)
        pad = (-raw.shape[1]) % 8
        if pad:
            raw = np.concatenate([raw, np.zeros((raw.shape[0], pad), np.uint8)], axis=1)
        return np.ascontiguousarray(raw).view(np.uint64)

    n_words = (a.shape[1] * a.dtype.itemsize + 7) // 8
    mult = np.random.default_rng(0x7A5C6A).integers(1, 2**62, size=n_words, dtype=np.uint64) * np.uint64(2) + np.uint64(
        1
    )
    h = np.zeros(n, dtype=np.uint64)
    step = max(1, (1 << 17) // max(n_words, 1))  # ~1 MB chunks: cache-resident, no large fresh allocations
    with np.errstate(over="ignore"):
        for s in range(0, n, step):
            w = words(slice(s, s + step))
            # mix each word before the weighted sum so that structured inputs spread over 64 bits
            h[s : s + step] = ((w ^ (w >> np.uint64(29))) * mult).sum(axis=1, dtype=np.uint64)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    rep = np.arange(n, dtype=np.int64)  # smallest row index of each exact group
    same = np.flatnonzero(hs[1:] == hs[:-1])
    if same.size:
        starts = np.flatnonzero(np.diff(np.concatenate([[-2], same])) > 1)
        run_start = same[starts]
        run_stop = np.concatenate([same[starts[1:] - 1], same[-1:]]) + 2
        for s, e in zip(run_start, run_stop):
            rows = np.sort(order[s:e])
            _, first, inv = np.unique(words(rows), axis=0, return_index=True, return_inverse=True)
            rep[rows] = rows[first[inv.reshape(-1)]]
    unique_index = np.flatnonzero(rep == np.arange(n))
    inverse = np.searchsorted(unique_index, rep).astype(np.int64)
    counts = np.bincount(inverse, minlength=unique_index.size)
    groups: list[list[int]] = []
    if (counts > 1).any():
        members = np.argsort(inverse, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for g in np.flatnonzero(counts > 1):
            groups.append(members[bounds[g] : bounds[g + 1]].tolist())
    return Duplicates(unique_index=unique_index.astype(np.int64), inverse=inverse, groups=groups)


def _same_data(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` are the same elements of the same memory (same pointer, shape, strides, dtype)."""
    return (
        a.device == b.device
        and a.dtype == b.dtype
        and a.data_ptr() == b.data_ptr()
        and tuple(a.shape) == tuple(b.shape)
        and a.stride() == b.stride()
    )


def _lookup(X: torch.Tensor) -> Duplicates | None:
    with _known_lock:
        for t, version, dup in reversed(_known):
            if _same_data(t, X) and t._version == version:  # noqa: SLF001 - torch's in-place write counter
                return dup
    return None


@contextlib.contextmanager
def known_duplicates(X: torch.Tensor, dup: Duplicates) -> Iterator[None]:
    """Within the block, :func:`exact_duplicates` of ``X`` (or of a view of exactly the same elements) returns
    ``dup`` instead of hashing ``X`` again (module docstring). ``dup`` must be ``exact_duplicates(X)``."""
    if not isinstance(X, torch.Tensor):
        raise TypeError("known_duplicates: X must be a torch.Tensor (the very tensor the estimators receive)")
    n = int(X.shape[0]) if X.dim() else 0
    if dup.inverse.shape[0] != n:
        raise ValueError(f"known_duplicates: the duplicates describe {dup.inverse.shape[0]} rows, X has {n}")
    entry = (X, X._version, dup)  # noqa: SLF001
    with _known_lock:
        _known.append(entry)
    try:
        yield
    finally:
        with _known_lock:
            for i in range(len(_known) - 1, -1, -1):
                if _known[i] is entry:
                    del _known[i]
                    break
