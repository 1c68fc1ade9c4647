"""The neighbours of the distinct rows searched in place (estimators/knn/distinct.py) against the search of the
de-duplicated copy (the engine's own answer on the distinct rows) and a float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import estimators.knn.distinct as distinct_mod
from estimators.id.mle import mle_id
from estimators.knn import distinct_kneighbors, distinct_rows, exact_duplicates, kneighbors, known_neighbours


def _with_copies(n: int, D: int, copies: list[tuple[int, int]], seed: int = 0) -> torch.Tensor:
    """n distinct float64 rows on a curved 6-d set in R^D (its first D coordinates when D < 12), then ``copies``
    ((source row, times)) of them appended, the rows shuffled. A copy of a row with a 0.0 entry carries -0.0 there:
    still the same point."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 6))
    X = np.hstack([Z, np.sin(Z)])
    X = X[:, :D] if D < 12 else X @ np.linalg.qr(rng.standard_normal((D, 12)))[0].T
    X[3, 0] = 0.0
    rows = [X]
    for r, times in copies:
        for _ in range(times):
            c = X[r].copy()
            c[c == 0.0] = -0.0
            rows.append(c[None])
    Y = np.vstack(rows)
    return torch.from_numpy(Y[np.random.default_rng(seed + 1).permutation(Y.shape[0])].copy())


def _brute(Xu: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((Xu[:, None, :] - Xu[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    i = np.lexsort((np.broadcast_to(np.arange(len(Xu)), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, i, 1), i


def _spy_calls(monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    real = distinct_mod.kneighbors

    def spy(ref, k, **kw):
        seen.append(ref)
        return real(ref, k, **kw)

    monkeypatch.setattr(distinct_mod, "kneighbors", spy)
    return seen


@pytest.mark.parametrize("D", [8, 64])
def test_in_place_equals_the_copy_bit_for_bit(D, monkeypatch):
    # 6000 x 64: the pruned symmetric search (n^2 >= 2^25, D >= 48); 8-d: the brute force
    X = _with_copies(6000, D, [(3, 2), (10, 1), (500, 3)])
    dup = exact_duplicates(X)
    assert dup.n_removed == 6
    Xu = distinct_rows(X, dup)
    want = kneighbors(Xu, 10)
    seen = _spy_calls(monkeypatch)
    got = distinct_kneighbors(X, dup, 10)
    assert len(seen) == 1 and seen[0] is X  # the data as given: no de-duplicated copy
    assert got.stats["surplus_rows"] == 6 and got.stats["k_searched"] == 16
    if D == 64:
        assert got.stats["method"] == "pruned-symmetric"
    assert torch.equal(got.distances, want.distances)
    assert torch.equal(got.indices, want.indices)
    assert torch.equal(got.query_index, torch.arange(Xu.shape[0]))


def test_small_data_matches_a_float64_brute_force():
    X = _with_copies(300, 5, [(3, 1), (7, 2), (8, 1)], seed=4)
    dup = exact_duplicates(X)
    Xu = distinct_rows(X, dup).numpy()
    d, i = _brute(Xu, 6)
    got = distinct_kneighbors(X, dup, 6)
    assert got.stats["k_searched"] == 10
    np.testing.assert_allclose(got.distances.numpy(), d, rtol=1e-13, atol=0)
    assert np.array_equal(got.indices.numpy(), i)


def test_query_index_counts_distinct_rows(monkeypatch):
    X = _with_copies(2000, 12, [(3, 1), (40, 2)], seed=2)
    dup = exact_duplicates(X)
    # some rows, and the duplicated points (their own copies are their nearest rows)
    qi = torch.tensor(sorted({0, 5, 17, 1999} | {int(dup.inverse[g[0]]) for g in dup.groups}))
    want = kneighbors(distinct_rows(X, dup), 7, query_index=qi)
    seen = _spy_calls(monkeypatch)
    got = distinct_kneighbors(X, dup, 7, query_index=qi)
    assert all(t is X for t in seen)
    assert torch.equal(got.distances, want.distances) and torch.equal(got.indices, want.indices)
    assert torch.equal(got.query_index, qi) and got.stats["k_searched"] == 10


def test_many_duplicates_search_the_copy(monkeypatch):
    X = _with_copies(400, 6, [(r, 1) for r in range(0, 40, 2)], seed=3)  # 20 surplus rows > k = 5
    dup = exact_duplicates(X)
    seen = _spy_calls(monkeypatch)
    got = distinct_kneighbors(X, dup, 5)
    assert seen[0] is not X and seen[0].shape[0] == X.shape[0] - 20
    want = kneighbors(distinct_rows(X, dup), 5)
    assert torch.equal(got.distances, want.distances) and torch.equal(got.indices, want.indices)


def test_a_registered_table_is_read_from_the_copy():
    X = _with_copies(500, 6, [(3, 1)], seed=5)
    dup = exact_duplicates(X)
    Xu = distinct_rows(X, dup)
    table = kneighbors(Xu, 9)
    with known_neighbours(Xu, table.distances, table.indices):
        got = distinct_kneighbors(X, dup, 4)
    assert got.stats["method"] == "known"
    assert torch.equal(got.distances, table.distances[:, :4])


def test_mle_is_the_same_in_place_and_on_the_copy():
    X = _with_copies(3000, 20, [(3, 1), (9, 4)], seed=6)
    r = mle_id(X, k=12)
    assert r.details["duplicates_removed"] == 5
    assert r.value == mle_id(distinct_rows(X, exact_duplicates(X)), k=12).value


def test_an_estimator_copies_the_distinct_rows_once(monkeypatch):
    import estimators.id._common as common
    from estimators.id.twonn import twonn_id

    X = _with_copies(600, 6, [(r, 1) for r in range(0, 20, 2)], seed=7)  # 10 surplus rows > twonn's k = 2
    made: list[int] = []

    def counting(*a):
        made.append(1)
        return distinct_rows(*a)

    monkeypatch.setattr(common, "distinct_rows", counting)
    monkeypatch.setattr(distinct_mod, "distinct_rows", counting)
    prep = common.prepare(X, estimator="twonn", min_points=3)
    got = prep.kneighbors(2)
    assert prep.X is prep.X and len(made) == 1  # the searched copy is the one X keeps
    want = kneighbors(distinct_rows(X, exact_duplicates(X)), 2)
    assert torch.equal(got.distances, want.distances) and torch.equal(got.indices, want.indices)
    made.clear()
    twonn_id(X)  # the full search and the decimation's subsets read one copy
    assert len(made) == 1
