"""The ID estimators on float64 input large enough for the engine's symmetric pruned search (issue 13).

The reference tests (test_id_mle.py, ...) use n=2000, where the engine takes its small-input brute force. Here
n is above the engine's size gates, so mle/twonn/gride run on the symmetric search (blocks pruned or by brute
force, in worker threads, with the fused top-k scan), on float64 data as the user gave it: skdim's nonlinear
benchmark manifold (Mn1_Nonlinear, 18-d in R^72), a 12-d Gaussian rotated into R^100 with 1e-4 noise, and
sklearn's breast_cancer/wine standardised and rotated into R^64 (tiny sets, the brute-force path: the same
float64 answer). References: ``skdim.id.MLE``/``TwoNN`` on the same float64 arrays, tolerance 1e-9 relative;
gride against a float64 brute-force kNN fed to our own Gride formula (the engine is what changes between
paths), 1e-12 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import skdim
import torch
from sklearn.datasets import load_breast_cancer, load_wine

import estimators.knn.distinct as distinct_mod
from estimators.id.gride import gride_id
from estimators.id.mle import mle_id
from estimators.id.twonn import twonn_id
from estimators.knn import KNNResult, exact_duplicates, known_duplicates

REL = 1e-9


def _rotate(Z: np.ndarray, D: int, seed: int) -> np.ndarray:
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D, Z.shape[1])))
    return Z @ Q.T


def _dataset(name: str) -> np.ndarray:
    if name == "nonlinear":
        bm = skdim.datasets.BenchmarkManifolds(random_state=3)
        return np.asarray(bm.generate("Mn1_Nonlinear", n=6000, dim=72, d=18), np.float64)
    if name == "gauss12":
        rng = np.random.default_rng(12)
        return _rotate(rng.standard_normal((6000, 12)), 100, 1) + 1e-4 * rng.standard_normal((6000, 100))
    X = (load_breast_cancer if name == "breast_cancer" else load_wine)().data.astype(np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return _rotate(X, 64, 2)


NAMES = ["nonlinear", "gauss12", "breast_cancer", "wine"]


def _spy(module, seen: list):
    knn = module.kneighbors

    def spy(*a, **kw):
        r = knn(*a, **kw)
        seen.append(r.stats)
        return r

    return spy


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("name", NAMES)
def test_mle_and_twonn_equal_skdim_on_float64(name, monkeypatch):
    X = _dataset(name)
    assert np.unique(X, axis=0).shape[0] == X.shape[0]
    seen: list = []
    monkeypatch.setattr(distinct_mod, "kneighbors", _spy(distinct_mod, seen))
    r = mle_id(torch.from_numpy(X))
    if X.shape[0] >= 6000:
        assert seen[-1]["method"] == "pruned-symmetric"
    assert _rel(r.value, skdim.id.MLE().fit(X).dimension_) <= REL
    t = twonn_id(torch.from_numpy(X), decimation=False)
    assert _rel(t.value, skdim.id.TwoNN().fit(X).dimension_) <= REL


@pytest.mark.parametrize("name", ["nonlinear", "gauss12"])
def test_gride_float64_engine_equals_brute_force_neighbours(name, monkeypatch):
    X = _dataset(name)
    a = gride_id(torch.from_numpy(X)).value
    D = np.sqrt(np.maximum(0.0, (X * X).sum(1)[:, None] + (X * X).sum(1)[None, :] - 2 * X @ X.T))
    np.fill_diagonal(D, np.inf)

    def brute(ref, k, **kw):  # float64 distances by differences on the k + 8 nearest of a float64 GEMM pre-sort
        idx = np.argsort(D, axis=1, kind="stable")[:, : k + 8]
        d = np.sqrt(((ref.numpy()[:, None, :] - ref.numpy()[idx]) ** 2).sum(-1))
        o = np.argsort(d, axis=1, kind="stable")[:, :k]
        return KNNResult(
            distances=torch.from_numpy(np.take_along_axis(d, o, 1)),
            indices=torch.from_numpy(np.take_along_axis(idx, o, 1)),
            query_index=None,
        )

    monkeypatch.setattr(distinct_mod, "kneighbors", brute)
    b = gride_id(torch.from_numpy(X)).value
    assert _rel(a, b) <= 1e-12


def test_known_duplicates_are_used_for_the_same_tensor_only(monkeypatch):
    import estimators.knn.duplicates as dmod

    X = torch.from_numpy(np.vstack([_dataset("wine"), _dataset("wine")[:5]]))
    dup = exact_duplicates(X)
    assert dup.n_removed == 5
    hits = []
    lookup = dmod._lookup
    monkeypatch.setattr(dmod, "_lookup", lambda t: (hits.append(lookup(t)), hits[-1])[1])
    with known_duplicates(X, dup):
        assert exact_duplicates(X) is dup
        assert exact_duplicates(X.view(X.shape)) is dup  # a view of the same elements
        assert exact_duplicates(X[:-1]) is not dup  # other elements: computed
        r = mle_id(X, k=5)
        assert r.details["duplicates_removed"] == 5
        assert hits[-1] is dup  # mle's prepare found it
        X.mul_(1.0)  # an in-place torch write: the registered answer no longer counts
        assert exact_duplicates(X) is not dup
    assert exact_duplicates(X) is not dup  # outside the block nothing is cached
    with pytest.raises(ValueError):
        with known_duplicates(X[:10], dup):
            pass
