"""The ``mle`` estimator against scikit-dimension (docs/methods.md §1.1, §6).

References: ``skdim.id.MLE`` 0.5.0 on skdim's 24 benchmark manifolds (n=2000, random_state=0; none has exact
duplicate points, checked below), sklearn's digits (no duplicates, 18 points with r1 = r2 but no point whose 20
neighbour distances are all equal, so skdim and the guards agree) and a 10-d Gaussian rotated into R^100.
Tolerance 1e-9 relative (the two use different but exact float64 neighbour searches).
"""

from __future__ import annotations

import numpy as np
import pytest
import skdim
import torch
from reference_data import DATASETS, data, rel
from reference_data import all_data as _all_data

from estimators import registry
from estimators.base import EstimatorError
from estimators.id.mle import MLEParams, mle_id

REL = 1e-9


def test_reference_sets_have_no_duplicates():
    # so skdim (which would return 0 on duplicates) and our deduplicated estimate see the same points
    for name in DATASETS:
        X = data(name)
        assert np.unique(X, axis=0).shape[0] == X.shape[0], name
    assert sorted(_all_data()) == sorted(DATASETS)


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in DATASETS])
def test_default_equals_skdim(name):
    X = data(name)
    ref = skdim.id.MLE().fit(X).dimension_
    r = mle_id(torch.from_numpy(X))
    assert rel(r.value, ref) <= REL
    d = r.details
    assert (d["k"], d["normalizer"], d["pooling"]) == (20, "k-1", "mg")
    assert d["n_used"] == d["n_unique"] == d["n_input"] == X.shape[0]
    assert d["duplicates_removed"] == 0 and d["ties_dropped"] == 0
    assert r.warnings == []
    # the ID-vs-k curve comes from the same single kNN call; its k=20 entry is the headline value
    assert [row["k"] for row in d["per_k"]] == list(range(3, 21))
    assert rel(d["per_k"][-1]["value"], r.value) <= 1e-12


@pytest.mark.parametrize(
    "name,k,unbiased,comb",
    [
        pytest.param("M1_Sphere", 10, True, "mle", id="sphere-k10-k2-mg"),
        pytest.param("M7_Roll", 5, False, "mean", id="roll-k5-k1-mean"),
        pytest.param("M12_Norm", 25, True, "median", id="norm-k25-k2-median"),
        pytest.param("digits", 20, False, "median", id="digits-k20-k1-median"),
        pytest.param("gauss10_in_R100", 7, True, "mean", id="gauss-k7-k2-mean"),
        pytest.param("Mbeta", 3, False, "mle", id="mbeta-k3-k1-mg"),
    ],
)
def test_variants_equal_skdim(name, k, unbiased, comb):
    X = data(name)
    ref = skdim.id.MLE(unbiased=unbiased).fit(X, n_neighbors=k, comb=comb).dimension_
    pooling = {"mle": "mg", "mean": "mean", "median": "median"}[comb]
    r = mle_id(torch.from_numpy(X), k=k, normalizer="k-2" if unbiased else "k-1", pooling=pooling)
    assert rel(r.value, ref) <= REL


@pytest.mark.parametrize("kk", [3, 7, 12, 20])
def test_per_k_curve_equals_skdim_at_each_k(kk):
    X = data("M4_Nonlinear")
    r = mle_id(torch.from_numpy(X), k=20)
    row = next(p for p in r.details["per_k"] if p["k"] == kk)
    assert rel(row["value"], skdim.id.MLE().fit(X, n_neighbors=kk).dimension_) <= REL


def test_pointwise_quantiles_equal_skdim():
    X = data("M6_Nonlinear")
    est = skdim.id.MLE().fit(X)
    q = mle_id(torch.from_numpy(X)).details["pointwise"]
    ref = np.quantile(est.dimension_pw_, [0.05, 0.5, 0.95])
    for key, v in zip(("q05", "q50", "q95"), ref):
        assert rel(q[key], v) <= REL
    assert rel(q["min"], est.dimension_pw_.min()) <= REL and rel(q["max"], est.dimension_pw_.max()) <= REL


@pytest.mark.parametrize("k", [5, 20, 25])
@pytest.mark.parametrize("pooling", ["mg", "mean", "median"])
def test_pope_konz_k2_identity(k, pooling):
    """docs/methods.md §1.1: on the same neighbours, value(k−2) = (k−2)/(k−1) · value(k−1), to 1e-12."""
    X = torch.from_numpy(data("M10b_Cubic"))
    a = mle_id(X, k=k, pooling=pooling).value
    b = mle_id(X, k=k, pooling=pooling, normalizer="k-2").value
    assert rel(b, (k - 2) / (k - 1) * a) <= 1e-12


def test_levina_bickel_k1_k2_average():
    """k1..k2: the arithmetic mean over k of the pooled estimates (Levina–Bickel), each equal to skdim's."""
    X = data("M3_Nonlinear_4to6")
    ref = np.mean([skdim.id.MLE().fit(X, n_neighbors=k, comb="mean").dimension_ for k in range(10, 21)])
    r = mle_id(torch.from_numpy(X), k1=10, k2=20, pooling="mean")
    assert rel(r.value, ref) <= REL
    assert (r.details["k1"], r.details["k2"], r.details["k"]) == (10, 20, None)
    assert [p["k"] for p in r.details["per_k"]] == list(range(3, 21))


def test_anchors_query_a_seeded_subset_against_all_points():
    X = data("M9_Affine")
    n_anchor, seed = 500, 7
    r = mle_id(torch.from_numpy(X), anchors=n_anchor, seed=seed)
    assert r.details["n_anchors"] == n_anchor == r.details["n_used"]
    # reference: skdim's pooling on the anchors' neighbours among ALL points (sklearn kNN)
    from sklearn.neighbors import NearestNeighbors

    idx = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=n_anchor, replace=False))
    dist, ind = NearestNeighbors(n_neighbors=20).fit(X).kneighbors()
    ref = skdim.id.MLE().fit(X, precomputed_knn_arrays=(dist[idx], ind[idx])).dimension_
    assert rel(r.value, ref) <= REL
    # a fraction: round(0.25 * N) anchors; anchors=1.0 is every point, i.e. the plain estimate
    assert mle_id(torch.from_numpy(X), anchors=0.25).details["n_anchors"] == 500
    assert mle_id(torch.from_numpy(X), anchors=1.0).value == mle_id(torch.from_numpy(X)).value
    big = mle_id(torch.from_numpy(X[:100]), anchors=1000)
    assert big.details["n_anchors"] == 100 and any("anchors=1000" in w for w in big.warnings)


# ---- docs/methods.md §6 simulation rows ([C-sim]: N=2000, rotated into R^50, mean over seeds) -----------------------
# We average 10 seeds (the table used 5) so that the seed-to-seed sd (~0.03–0.05) does not eat the tolerance.


def _embed(Z: np.ndarray, rng, D: int = 50) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((D, Z.shape[1])))
    return Z @ q.T


def _sim(kind: str, d: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(1000 + seed)
    if kind == "sphere":  # S^d in R^{d+1}
        Z = rng.standard_normal((2000, d + 1))
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    elif kind == "gauss":
        Z = rng.standard_normal((2000, d))
    else:
        Z = rng.random((2000, d))
    return torch.from_numpy(_embed(Z, rng))


def _mean_seeds(kind, d, **kw) -> float:
    return float(np.mean([mle_id(_sim(kind, d, s), **kw).value for s in range(10)]))


@pytest.mark.parametrize(
    "kind,d,kw,expected,tol",
    [
        pytest.param("sphere", 5, {}, 4.88, 0.15, id="S5-MLE-A"),
        pytest.param("sphere", 5, {"normalizer": "k-2"}, 4.62, 0.15, id="S5-MLE-P"),
        pytest.param("sphere", 5, {"k": 5}, 4.91, 0.15, id="S5-MLE-5"),
        pytest.param("gauss", 5, {}, 5.02, 0.2, id="gauss5-MLE-A"),
        pytest.param("gauss", 10, {}, 9.14, 0.4, id="gauss10-MLE-A"),
    ],
)
def test_methods_sanity_rows(kind, d, kw, expected, tol):
    assert abs(_mean_seeds(kind, d, **kw) - expected) <= tol


def test_arithmetic_mean_exceeds_harmonic_on_sphere():
    """docs/methods.md §6: LB arithmetic mean 5.14 vs MacKay–Ghahramani 4.88 on S^5 (arithmetic > harmonic)."""
    X = _sim("sphere", 5, 0)
    lb, mg = mle_id(X, pooling="mean").value, mle_id(X).value
    assert lb > mg
    assert abs(lb - 5.14) <= 0.15


def test_uniform_cube_ordering():
    """docs/methods.md §6: 1.95, 4.47, 8.08, 14.32 for d = 2, 5, 10, 20 — increasing, bias growing with d."""
    vals = [mle_id(_sim("cube", d, 0)).value for d in (2, 5, 10, 20)]
    assert vals == sorted(vals)
    for v, e, d in zip(vals, (1.95, 4.47, 8.08, 14.32), (2, 5, 10, 20)):
        assert abs(v - e) <= 0.05 * d  # single seed; the [C-sim] sd is ~0.01·d
    assert [d - v for v, d in zip(vals, (2, 5, 10, 20))] == sorted(d - v for v, d in zip(vals, (2, 5, 10, 20)))


# ---- input checks and the registry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param({"k": 2}, "k must be an integer >= 3", id="k-too-small"),
        pytest.param({"k1": 5}, "give both k1 and k2", id="k1-alone"),
        pytest.param({"k1": 9, "k2": 5}, "must not exceed", id="k1-gt-k2"),
        pytest.param({"pooling": "geo"}, "pooling must be", id="bad-pooling"),
        pytest.param({"normalizer": "k"}, "normalizer must be", id="bad-normalizer"),
        pytest.param({"anchors": 0}, "anchors as a count", id="zero-anchors"),
        pytest.param({"anchors": 1.5}, "fraction", id="anchor-fraction"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    X = torch.from_numpy(data("M7_Roll")[:200])
    with pytest.raises(EstimatorError, match=match):
        mle_id(X, **kwargs)
    with pytest.raises(EstimatorError, match=match.split()[0]):
        registry.get("mle").parse_params(kwargs)


def test_too_few_points_and_bad_values():
    with pytest.raises(EstimatorError, match="at least 21 distinct points"):
        mle_id(torch.rand(15, 3, dtype=torch.float64))
    X = torch.rand(50, 3, dtype=torch.float64)
    X[7, 1] = float("nan")
    with pytest.raises(EstimatorError, match="NaN/Inf.*first bad row 7"):
        mle_id(X)
    with pytest.raises(EstimatorError, match=r"shape \(N, D\)"):
        mle_id(torch.rand(50, dtype=torch.float64))


def test_registered_estimator():
    est = registry.get("mle")
    assert est.version == "1.0.0" and est.params_model is MLEParams and not est.needs_labels
    assert est.min_samples == 4
    p = est.parse_params({})
    assert (p.k, p.normalizer, p.pooling, p.k1, p.k2, p.anchors) == (20, "k-1", "mg", None, None, None)
    X = data("M5b_Helix2d")
    seen = []
    r = est.fn(
        torch.from_numpy(X.astype(np.float32)),
        None,
        p,
        device=torch.device("cpu"),
        progress=lambda f, s: seen.append(f),
    )
    ref = skdim.id.MLE().fit(X.astype(np.float32).astype(np.float64)).dimension_
    assert rel(r.value, ref) <= REL
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)


def test_log_ratio_sums_equal_the_direct_sums():
    """The ID-against-k curve's sums ``sum_{j<=k} log(T_k / T_j)``, all k from one cumulative sum, against the
    direct sum per k (float64; a few units in the last place apart), zero-distance rows left non-finite."""
    from estimators.id.mle import _log_ratio_sums

    rng = np.random.default_rng(0)
    D = np.sort(rng.lognormal(0.0, 0.3, size=(500, 25)) * 10.0 ** rng.uniform(-6, 6, size=(500, 1)), axis=1)
    D[0, :3] = D[0, 3]  # ties at the start
    S = _log_ratio_sums(D)
    for k in range(1, 26):
        direct = np.log(D[:, k - 1 : k] / D[:, :k]).sum(1)
        np.testing.assert_allclose(S[:, k - 1], direct, rtol=1e-12, atol=1e-13 * k)
    Z = D.copy()
    Z[1, 0] = 0.0
    assert not np.isfinite(_log_ratio_sums(Z)[1, 1:]).all()
