"""Properties every ID estimator must have (docs/methods.md §0, §1.1, §6): invariance under scaling, translation
and rotation (1e-6 rel), exact duplicates removed and counted (value unchanged, §6 allows ±2%), ties on
lattice data dropped with a warning and never a silent 0/inf/NaN, clear errors for unusable input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import skdim
import torch

from estimators.base import EstimatorError
from estimators.id import gride_id, mle_id, twonn_id


def _estimators():
    return [
        pytest.param(lambda X, **kw: mle_id(X, **kw), id="mle"),
        pytest.param(lambda X, **kw: mle_id(X, k1=5, k2=12, pooling="median", **kw), id="mle-k1k2-median"),
        pytest.param(lambda X, **kw: twonn_id(X, **kw), id="twonn-ls"),
        pytest.param(lambda X, **kw: twonn_id(X, variant="bayes", **kw), id="twonn-bayes"),
        pytest.param(lambda X, **kw: gride_id(X, **kw), id="gride"),
    ]


def _curve(r) -> list[float]:
    """Every number a user would plot, flattened, for the invariance comparisons."""
    d = r.details
    if "per_k" in d:
        return [p["value"] for p in d["per_k"]]
    if "curve" in d:
        return [c["id"] for c in d["curve"]] + [c["err"] for c in d["curve"]]
    return [lv["mean"] for lv in d["decimation"]]


@pytest.fixture(scope="module")
def manifold() -> np.ndarray:
    X = skdim.datasets.BenchmarkManifolds(random_state=0).generate(n=1200)["M8_Nonlinear"]  # 12-d in R^72
    return np.asarray(X, dtype=np.float64)


@pytest.mark.parametrize("estimate", _estimators())
@pytest.mark.parametrize("transform", ["scale", "shrink", "translate", "rotate"])
def test_invariance(estimate, transform, manifold):
    rng = np.random.default_rng(5)
    X = manifold
    if transform == "scale":
        Y = X * 3.7
    elif transform == "shrink":
        Y = X * 1e-3
    elif transform == "translate":
        Y = X + rng.normal(0, 5.0, X.shape[1])
    else:
        Q, _ = np.linalg.qr(rng.standard_normal((X.shape[1], X.shape[1])))
        Y = X @ Q
    a, b = estimate(torch.from_numpy(X)), estimate(torch.from_numpy(Y))
    assert math.isfinite(a.value) and b.value == pytest.approx(a.value, rel=1e-6)
    np.testing.assert_allclose(_curve(b), _curve(a), rtol=1e-6)


@pytest.mark.parametrize("estimate", _estimators())
def test_duplicates_removed_counted_and_harmless(estimate, manifold):
    rng = np.random.default_rng(9)
    X = manifold[:1000]
    extra = X[rng.integers(0, 1000, 150)]  # 150 copies, some rows copied several times
    Y = np.concatenate([X, extra])[rng.permutation(1150)]
    a, b = estimate(torch.from_numpy(X)), estimate(torch.from_numpy(Y))
    assert b.details["duplicates_removed"] == 150 and b.details["n_input"] == 1150
    assert b.details["n_unique"] == 1000 and a.details["duplicates_removed"] == 0
    assert any(w.startswith("150 exact duplicate rows removed") for w in b.warnings)
    assert math.isfinite(b.value) and abs(b.value / a.value - 1) <= 0.02  # docs/methods.md §6 tolerance
    assert b.value == pytest.approx(a.value, rel=1e-10)  # in fact the same distinct points


def test_duplicates_break_the_reference_but_not_us(manifold):
    """Why we dedupe: skdim's MLE collapses to 0 with a duplicate point (ln(T_k/0) = ∞), ours does not."""
    X = manifold[:500]
    Y = np.concatenate([X, X[:1]])
    with np.errstate(divide="ignore"):
        assert skdim.id.MLE().fit(Y).dimension_ == 0.0
    assert mle_id(torch.from_numpy(Y)).value == pytest.approx(mle_id(torch.from_numpy(X)).value, rel=1e-12)


@pytest.fixture(scope="module")
def lattice() -> np.ndarray:
    # integer points in a 12^3 box: many exact duplicates and many equal neighbour distances
    return np.random.default_rng(0).integers(0, 12, size=(1500, 3)).astype(np.float64)


@pytest.mark.parametrize(
    "estimate,key",
    [
        pytest.param(lambda X: mle_id(X, k=4), "ties_dropped", id="mle-k4"),
        pytest.param(lambda X: twonn_id(X), "ties_dropped", id="twonn"),
        pytest.param(lambda X: twonn_id(X, variant="ml"), "ties_dropped", id="twonn-ml"),
        pytest.param(lambda X: gride_id(X, n1=1, n2=2), "ties_dropped", id="gride-1-2"),
    ],
)
def test_lattice_ties_give_finite_values_and_a_warning(estimate, key, lattice):
    r = estimate(torch.from_numpy(lattice))
    assert math.isfinite(r.value) and 1.0 < r.value < 4.5
    assert r.details[key] > 0 and r.details["duplicates_removed"] > 0
    assert any("tie" in w for w in r.warnings)
    if r.ci is not None:
        assert all(math.isfinite(c) for c in r.ci)
    json.dumps(r.details, allow_nan=False)  # no NaN/inf anywhere in the details
    if "curve" in r.details:
        for c in r.details["curve"]:
            assert c["id"] is None or math.isfinite(c["id"])


def test_fully_tied_lattices_raise():
    g3 = np.stack(np.meshgrid(*[np.arange(8.0)] * 3), -1).reshape(-1, 3)  # every point has >= 3 neighbours at 1
    with pytest.raises(EstimatorError, match=r"only 0 of 512 distinct points remain"):
        mle_id(torch.from_numpy(g3), k=3)
    g2 = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2)
    with pytest.raises(EstimatorError, match=r"only 0 of 400 distinct points remain at \(n1, n2\) = \(1, 2\)"):
        gride_id(torch.from_numpy(g2), n1=1, n2=2)
    # the other steps of the same grid are fine, and the first one is reported as empty, not as a number
    r = gride_id(torch.from_numpy(g2))
    assert r.details["curve"][0]["id"] is None and r.details["curve"][0]["ties_dropped"] == 400
    assert math.isfinite(r.value)


@pytest.mark.parametrize("fn", [mle_id, twonn_id, gride_id], ids=["mle", "twonn", "gride"])
def test_bad_input(fn):
    X = torch.rand(100, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    X[3, 2] = float("inf")
    with pytest.raises(EstimatorError, match="NaN/Inf"):
        fn(X)
    with pytest.raises(EstimatorError, match="distinct points"):
        fn(torch.zeros(10, 3))  # ten copies of one point
    with pytest.raises(EstimatorError, match="real-valued"):
        fn(torch.ones(10, 3, dtype=torch.bool))


@pytest.mark.parametrize("fn", [mle_id, twonn_id, gride_id], ids=["mle", "twonn", "gride"])
def test_progress_and_integer_input(fn):
    X = np.random.default_rng(2).integers(0, 1000, size=(600, 6))
    seen: list[float] = []
    r = fn(torch.from_numpy(X), progress=lambda f, s: seen.append(f))
    assert seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen) and seen == sorted(seen)
    assert r.value == pytest.approx(fn(torch.from_numpy(X.astype(np.float64))).value, rel=1e-12)
