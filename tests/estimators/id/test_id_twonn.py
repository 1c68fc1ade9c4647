"""The ``twonn`` estimator against scikit-dimension and DADApy (docs/methods.md §1.2, §6).

* ``ls`` (default) = ``skdim.id.TwoNN()``; ``ml`` = ``skdim.id.TwoNN(method="mle")`` (censored MLE) and, with
  ``discard_fraction=0``, DADApy ``compute_id_2NN(algorithm="ml")``; ``bayes`` with ``discard_fraction=0`` =
  DADApy ``compute_id_2NN_wprior()``. Tolerance 1e-9 relative.
* Data: skdim's 24 benchmark manifolds (n=2000, random_state=0, no duplicates), a 10-d Gaussian in R^100, and
  sklearn digits. Digits has 18 points with r1 = r2 (integer pixels): skdim keeps them (ln μ = 0), we drop and
  count them, so digits is compared with skdim's algorithm on the retained (r1, r2) pairs (``dist=True``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import skdim
import torch
from dadapy import Data
from reference_data import NO_TIES, data, rel
from sklearn.neighbors import NearestNeighbors

from estimators import registry
from estimators.base import EstimatorError
from estimators.id.twonn import TwoNNParams, _fit, twonn_id

REL = 1e-9


def run(X: np.ndarray, **kw):
    kw.setdefault("decimation", False)
    return twonn_id(torch.from_numpy(X), **kw)


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in NO_TIES])
def test_ls_equals_skdim(name):
    X = data(name)
    r = run(X)
    assert rel(r.value, skdim.id.TwoNN().fit(X).dimension_) <= REL
    d = r.details
    assert d["ties_dropped"] == 0 and d["duplicates_removed"] == 0 and r.warnings == []
    assert d["n_used"] == X.shape[0] and d["n_fit"] == int(X.shape[0] * 0.9)
    assert r.ci is None and r.ci_method is None


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in NO_TIES])
def test_ml_and_bayes_equal_skdim_and_dadapy(name):
    X = data(name)
    assert rel(run(X, variant="ml").value, skdim.id.TwoNN(method="mle").fit(X).dimension_) <= REL
    ml0 = run(X, variant="ml", discard_fraction=0.0)
    dd = Data(X.copy(), verbose=False, maxk=3)  # the two estimates read the same neighbour distances
    assert rel(ml0.value, dd.compute_id_2NN(algorithm="ml")[0]) <= REL
    b = run(X, variant="bayes", discard_fraction=0.0)
    ref_id, ref_sd, ref_scale = dd.compute_id_2NN_wprior(alpha=2, beta=5)
    assert rel(b.value, ref_id) <= REL
    assert rel(b.details["posterior"]["sd"], ref_sd) <= REL
    assert rel(b.details["scale"], ref_scale) <= REL
    for r in (ml0, b):
        assert r.ci[0] < r.value < r.ci[1] and r.ci_method


def test_digits_ties_dropped_and_counted():
    X = data("digits")
    dist, _ = NearestNeighbors(n_neighbors=2).fit(X).kneighbors()
    tied = dist[:, 0] == dist[:, 1]
    assert tied.sum() == 18  # integer pixels: exact ties
    for variant, method in (("ls", "linear"), ("ml", "mle")):
        r = run(X, variant=variant)
        assert r.details["ties_dropped"] == 18 and r.details["n_used"] == X.shape[0] - 18
        assert any("r1 = r2" in w and w.startswith("18 of 1797") for w in r.warnings)
        ref = skdim.id.TwoNN(dist=True, method=method).fit(dist[~tied]).dimension_
        assert np.isfinite(r.value) and rel(r.value, ref) <= REL


# ---- the intervals: exact for i.i.d. Pareto ratios ---------------------------------------------------------


@pytest.mark.parametrize("discard", [0.0, 0.1, 0.3])
def test_ml_interval_coverage_and_unbiasedness_on_pareto_ratios(discard):
    """ln μ ~ Exp(d) i.i.d.: (n−1)/T is unbiased and the chi-square interval has exact 95% coverage."""
    rng = np.random.default_rng(42)
    d, N, reps = 6.0, 200, 1000
    est, cover = [], 0
    for _ in range(reps):
        mu = np.exp(rng.exponential(1.0 / d, N))
        f = _fit(mu, "ml", discard, 0.95, 2.0, 5.0)
        est.append(f["value"])
        cover += f["ci"][0] <= d <= f["ci"][1]
    assert abs(np.mean(est) / d - 1) < 0.01  # se of the mean ≈ 0.3%
    assert abs(cover / reps - 0.95) < 0.021  # 3 binomial sd


def test_bayes_posterior_is_the_conjugate_gamma():
    rng = np.random.default_rng(1)
    mu = np.exp(rng.exponential(1 / 3.0, 500))
    f = _fit(mu, "bayes", 0.0, 0.9, 2.0, 5.0)
    S = np.sum(np.log(mu))
    assert rel(f["value"], (2 + 500) / (5 + S)) <= 1e-12
    from scipy import stats

    lo, hi = stats.gamma.ppf([0.05, 0.95], 502, scale=1 / (5 + S))
    assert rel(f["ci"][0], lo) <= 1e-12 and rel(f["ci"][1], hi) <= 1e-12
    assert rel(f["posterior"]["mode"], 501 / (5 + S)) <= 1e-12


# ---- decimation ---------------------------------------------------------------------------------------------


def test_decimation_levels():
    X = data("M10a_Cubic")
    r = twonn_id(torch.from_numpy(X), decimation_repeats=4, seed=3)
    levels = r.details["decimation"]
    assert [lv["n"] for lv in levels] == [2000, 1000, 500, 250, 125, 62, 31]
    assert [lv["repeats"] for lv in levels] == [1, 2, 4, 4, 4, 4, 4]
    assert levels[0]["mean"] == r.value and levels[0]["sd"] is None
    for lv in levels[1:]:
        assert lv["mean"] == pytest.approx(np.mean(lv["values"]), rel=1e-12)
        assert lv["sd"] == pytest.approx(np.std(lv["values"], ddof=1), rel=1e-12)
    # the nearest-neighbour scale grows as the data are thinned
    scales = [lv["scale"] for lv in levels]
    assert scales == sorted(scales)
    # a 1000-point subset of the 10-d cube gives a TwoNN estimate near the full one
    assert abs(levels[1]["mean"] - r.value) < 1.5
    again = twonn_id(torch.from_numpy(X), decimation_repeats=4, seed=3).details["decimation"]
    assert again == levels
    other = twonn_id(torch.from_numpy(X), decimation_repeats=4, seed=4).details["decimation"]
    assert other[1]["values"] != levels[1]["values"]


def test_decimation_subset_equals_skdim_on_that_subset():
    """Each level-1 value is skdim's TwoNN on the seeded half it names (first half of the permutation)."""
    X = data("M7_Roll")
    lv = twonn_id(torch.from_numpy(X), decimation_repeats=2, seed=11).details["decimation"][1]
    perm = np.random.default_rng(11).permutation(X.shape[0])
    refs = [skdim.id.TwoNN().fit(X[np.sort(perm[j * 1000 : (j + 1) * 1000])]).dimension_ for j in range(2)]
    assert all(rel(v, ref) <= REL for v, ref in zip(lv["values"], refs))


# ---- docs/methods.md §6 rows ---------------------------------------------------------------------------------------


def _sim(kind: str, d: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(1000 + seed)
    if kind == "sphere":
        Z = rng.standard_normal((2000, d + 1))
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    elif kind == "gauss":
        Z = rng.standard_normal((2000, d))
    else:
        Z = rng.random((2000, d))
    q, _ = np.linalg.qr(rng.standard_normal((50, Z.shape[1])))
    return torch.from_numpy(Z @ q.T)


@pytest.mark.parametrize(
    "kind,d,expected,tol",
    [
        pytest.param("sphere", 5, 4.87, 0.15, id="S5"),
        pytest.param("gauss", 5, 5.09, 0.2, id="gauss5"),
        pytest.param("gauss", 10, 9.88, 0.4, id="gauss10"),
    ],
)
def test_methods_sanity_rows(kind, d, expected, tol):
    # 10 seeds (the table used 5): TwoNN's seed-to-seed sd is 0.1–0.2 here
    mean = np.mean([twonn_id(_sim(kind, d, s), decimation=False).value for s in range(10)])
    assert abs(mean - expected) <= tol


def test_uniform_cube_ordering():
    """docs/methods.md §6 2NN: 1.97, 4.58, 8.54, 15.28 for d = 2, 5, 10, 20 — increasing, bias growing with d."""
    vals = [twonn_id(_sim("cube", d, 0), decimation=False).value for d in (2, 5, 10, 20)]
    assert vals == sorted(vals)
    for v, e, d in zip(vals, (1.97, 4.58, 8.54, 15.28), (2, 5, 10, 20)):
        assert abs(v - e) <= 0.1 * d  # one seed; TwoNN's sd grows with d


# ---- input checks and the registry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param({"variant": "huber"}, "variant must be", id="bad-variant"),
        pytest.param({"discard_fraction": 0.0}, "needs discard_fraction > 0", id="ls-no-discard"),
        pytest.param({"discard_fraction": 1.0}, "discard_fraction must lie", id="discard-all"),
        pytest.param({"ci_level": 1.0}, "ci_level", id="ci-level"),
        pytest.param({"variant": "bayes", "prior_alpha": 0.0}, "prior_alpha", id="prior"),
        pytest.param({"decimation_repeats": 0}, "decimation_repeats", id="repeats"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(EstimatorError, match=match):
        twonn_id(torch.from_numpy(data("M7_Roll")[:100]), **kwargs)
    with pytest.raises(EstimatorError, match=match.split()[0]):
        registry.get("twonn").parse_params(kwargs)


def test_all_points_tied_raises_clearly():
    g = np.stack(np.meshgrid(np.arange(30.0), np.arange(30.0)), -1).reshape(-1, 2)  # Z^2 grid: r1 = r2 everywhere
    with pytest.raises(EstimatorError, match=r"only 0 of 900 distinct points remain.*r1 = r2"):
        twonn_id(torch.from_numpy(g))


def test_registered_estimator():
    est = registry.get("twonn")
    assert est.version == "1.0.0" and est.params_model is TwoNNParams and est.min_samples == 3
    p = est.parse_params({"variant": "ml"})
    X = data("M11_Moebius")
    r = est.fn(torch.from_numpy(X), None, p, device=torch.device("cpu"), progress=lambda f, s: None)
    assert rel(r.value, skdim.id.TwoNN(method="mle").fit(X).dimension_) <= REL
    assert r.details["decimation"][0]["n"] == 2000
    json.dumps(r.details, allow_nan=False)  # plain JSON types only


@pytest.mark.parametrize("params", [{}, {"decimation_repeats": 3}, {"decimation": False}])
def test_cost_counts_the_searches_it_makes(params, monkeypatch):
    """The registry ``cost`` (the fan-out's dispatch order) is n²·d summed over the kNN searches twonn really
    makes: the full one and, with decimation, one per subset of every level (counted here as they happen)."""
    import estimators.id.twonn as twonn_module
    import estimators.knn.distinct as distinct_module

    searched = []
    real = twonn_module.kneighbors

    def counting(X, *args, **kw):
        searched.append(tuple(X.shape))
        return real(X, *args, **kw)

    monkeypatch.setattr(twonn_module, "kneighbors", counting)  # the decimation's subsets
    monkeypatch.setattr(distinct_module, "kneighbors", counting)  # the full search (of the distinct rows)
    X = torch.rand(1000, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    twonn_id(X, **params)
    est = registry.get("twonn")
    assert searched[0] == (1000, 5) and (len(searched) == 1) == (params.get("decimation") is False)
    assert est.cost(est.parse_params(params), 1000, 5) == sum(n * n * d for n, d in searched)
