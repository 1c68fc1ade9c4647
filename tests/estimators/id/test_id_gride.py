"""The ``gride`` estimator against DADApy 0.3.4 (docs/methods.md §1.5, §6).

Reference: ``dadapy.Data(X).return_id_scaling_gride(range_max=64)`` on skdim's 24 benchmark manifolds (n=2000,
random_state=0, no duplicates) and a 10-d Gaussian in R^100: the ID and the scale agree to 1e-4 relative at
every step (DADApy bisects to 1e-7 absolute; we solve ℓ'(d) = 0 to ~1e-13). DADApy's error bar uses N/d² and the
unfiltered ratios where ours is √(1/−ℓ''(d)) of the ratios actually fitted, with (N−1)/d²: they differ by
O(1/N) (≤ 2e-3 here), and ours is checked separately against a finite-difference −ℓ''.
Digits has ties (18 points with T1 = T2): DADApy nudges μ = 1 by 10ε and keeps them, we drop them, so its
(1, 2) step is compared with DADApy's own solver on the retained ratios.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from dadapy import Data
from dadapy._utils import utils as dadapy_utils
from reference_data import NO_TIES, data
from scipy.special import betaln
from sklearn.neighbors import NearestNeighbors

from estimators import registry
from estimators.base import EstimatorError
from estimators.id.gride import GrideParams, gride_id
from estimators.id.twonn import twonn_id


@functools.cache
def result(name: str):
    return gride_id(torch.from_numpy(data(name)))


def loglik(d: float, mu: np.ndarray, n1: int, n2: int) -> float:
    """docs/methods.md §1.5 log-likelihood with DADApy's (N−1) ln d term."""
    N = mu.size
    return (
        (N - 1) * np.log(d)
        + (n2 - n1 - 1) * np.sum(np.log(mu**d - 1))
        - ((n2 - 1) * d + 1) * np.sum(np.log(mu))
        - N * betaln(n2 - n1, n1)
    )


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in NO_TIES])
def test_curve_equals_dadapy(name):
    ids, errs, scales = Data(data(name).copy(), verbose=False).return_id_scaling_gride(range_max=64)
    r = result(name)
    curve = r.details["curve"]
    assert [(c["n1"], c["n2"]) for c in curve] == [(1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
    np.testing.assert_allclose([c["id"] for c in curve], ids, rtol=1e-4, atol=0)
    np.testing.assert_allclose([c["scale"] for c in curve], scales, rtol=1e-4, atol=0)
    np.testing.assert_allclose([c["err"] for c in curve], errs, rtol=2e-3, atol=0)
    assert r.value == curve[-1]["id"] and r.details["selected"] is curve[-1]
    assert all(c["ties_dropped"] == 0 for c in curve) and r.warnings == []


@pytest.mark.parametrize(
    "name,expected",
    [
        pytest.param("M1_Sphere", 8.308, id="M1"),
        pytest.param("M7_Roll", 1.915, id="M7"),
        pytest.param("M12_Norm", 13.329, id="M12"),
    ],
)
def test_methods_reference_values_at_32_64(name, expected):
    # docs/methods.md §6 quotes DADApy's values to 3 decimals: agree within half a unit of the last digit
    r = result(name)
    assert r.details["selected"]["n1"] == 32 and r.details["selected"]["n2"] == 64
    assert abs(r.value - expected) <= 5e-4


@pytest.mark.parametrize("name", ["M1_Sphere", "M7_Roll", "Mbeta"])
def test_maximum_and_error_bar_from_the_likelihood(name):
    X = data(name)
    dist, _ = NearestNeighbors(n_neighbors=64).fit(X).kneighbors()
    for c in result(name).details["curve"]:
        n1, n2, d = c["n1"], c["n2"], c["id"]
        mu = dist[:, n2 - 1] / dist[:, n1 - 1]
        q95, q50 = np.percentile(mu, [95, 50])
        mu = mu[mu < 20 * (q95 - q50) + q50]
        assert mu.size == c["n_used"]
        l0 = loglik(d, mu, n1, n2)
        assert l0 >= loglik(d * (1 + 1e-4), mu, n1, n2) and l0 >= loglik(d * (1 - 1e-4), mu, n1, n2)
        h = 1e-3 * d
        curv = (loglik(d + h, mu, n1, n2) - 2 * l0 + loglik(d - h, mu, n1, n2)) / h**2
        assert c["err"] == pytest.approx(np.sqrt(-1 / curv), rel=1e-4)


def test_first_step_is_twonn_ml():
    """(n1, n2) = (1, 2) reduces to the ML TwoNN (N−1)/Σ ln μ (when DADApy's filter drops nothing)."""
    X = torch.from_numpy(data("M1_Sphere"))
    step = gride_id(X).details["curve"][0]
    assert step["n_filtered"] == 0
    assert step["id"] == pytest.approx(
        twonn_id(X, variant="ml", discard_fraction=0.0, decimation=False).value, rel=1e-12
    )


def test_digits_ties():
    X = data("digits")
    r = result("digits")
    ids, _, scales = Data(X.copy(), verbose=False).return_id_scaling_gride(range_max=64)
    curve = r.details["curve"]
    assert curve[0]["ties_dropped"] == 18 and all(c["ties_dropped"] == 0 for c in curve[1:])
    assert any("(1,2): 18" in w for w in r.warnings)
    np.testing.assert_allclose([c["id"] for c in curve[1:]], ids[1:], rtol=1e-4, atol=0)
    dist, _ = NearestNeighbors(n_neighbors=2).fit(X).kneighbors()
    keep = dist[:, 0] < dist[:, 1]
    ref = dadapy_utils._argmax_loglik(np.float64, 0.001, 1000, dist[keep, 1] / dist[keep, 0], 1, 2, eps=1e-7)
    assert curve[0]["id"] == pytest.approx(ref, rel=1e-4)


def test_selected_pair_off_the_ladder():
    X = data("M4_Nonlinear")
    r = gride_id(torch.from_numpy(X), n1=3, n2=7)
    sel = r.details["selected"]
    assert (sel["n1"], sel["n2"], r.value) == (3, 7, sel["id"])
    dist, _ = NearestNeighbors(n_neighbors=7).fit(X).kneighbors()
    mus = dist[:, 6] / dist[:, 2]
    ref = dadapy_utils._argmax_loglik(np.float64, 0.001, 1000, mus.copy(), 3, 7, eps=1e-7)
    assert r.value == pytest.approx(ref, rel=1e-4)
    on = gride_id(torch.from_numpy(X), n1=8, n2=16)
    assert on.value == on.details["curve"][3]["id"] and on.details["selected"] is on.details["curve"][3]
    z = 1.959963984540054
    assert on.ci == pytest.approx(
        (on.value - z * on.details["selected"]["err"], on.value + z * on.details["selected"]["err"])
    )


def test_range_max_beyond_the_data():
    X = torch.from_numpy(data("M7_Roll")[:40])
    r = gride_id(X)
    assert r.details["max_rank"] == 39
    assert [(c["n1"], c["n2"]) for c in r.details["curve"]][-1] == (16, 32)
    assert any("range_max=64 exceeds" in w for w in r.warnings)
    r16 = gride_id(torch.from_numpy(data("M7_Roll")), range_max=16)
    assert [c["n2"] for c in r16.details["curve"]] == [2, 4, 8, 16]
    assert r16.value == pytest.approx(result("M7_Roll").details["curve"][3]["id"], rel=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param({"range_max": 1}, "range_max must be", id="range"),
        pytest.param({"n1": 4}, "give both n1 and n2", id="n1-alone"),
        pytest.param({"n1": 8, "n2": 8}, "must be larger", id="n2-le-n1"),
        pytest.param({"ci_level": 0.0}, "ci_level", id="ci"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(EstimatorError, match=match):
        gride_id(torch.from_numpy(data("M7_Roll")[:100]), **kwargs)
    with pytest.raises(EstimatorError, match=match.split()[0]):
        registry.get("gride").parse_params(kwargs)
    with pytest.raises(EstimatorError, match="at least 129 distinct points"):
        gride_id(torch.from_numpy(data("M7_Roll")[:100]), n1=64, n2=128)


def test_registered_estimator():
    est = registry.get("gride")
    assert est.version == "1.0.0" and est.params_model is GrideParams and est.min_samples == 3
    p = est.parse_params({})
    assert (p.range_max, p.n1, p.n2) == (64, None, None)
    X = data("M12_Norm")
    r = est.fn(torch.from_numpy(X.astype(np.float32)), None, p, device=torch.device("cpu"), progress=lambda f, s: None)
    ref = gride_id(torch.from_numpy(X.astype(np.float32).astype(np.float64))).value
    assert r.value == pytest.approx(ref, rel=1e-12)
    json.dumps(r.details, allow_nan=False)
