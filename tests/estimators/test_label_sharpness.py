"""label_sharpness (docs/methods.md §2) and the exact inter-class pair search behind it (estimators/knn/pairs.py).

References: the definition (K_F = 1/min inter-class distance, docs/methods.md §6 rows "K_F") and an independent
brute-force float64 numpy computation over all N² pairs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from estimators import registry
from estimators.base import EstimatorError
from estimators.knn.pairs import interclass_min
from estimators.label_sharpness import LabelSharpnessParams, label_sharpness
from taskgauge.report import result_to_json

CPU = torch.device("cpu")


def run(X, y, **params):
    X = torch.as_tensor(np.asarray(X))
    y = None if y is None else torch.as_tensor(np.asarray(y), dtype=torch.long)
    return label_sharpness(X, y, LabelSharpnessParams(**params), device=CPU)


def brute_force(X: np.ndarray, y: np.ndarray):
    """All-pairs float64 distances by differences; returns (δ, C×C class minima, sorted inter-class distances)."""
    X = X.astype(np.float64)
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    diff = y[:, None] != y[None, :]
    labels = np.unique(y)
    cm = np.full((labels.size, labels.size), np.nan)
    for a, la in enumerate(labels):
        for b, lb in enumerate(labels):
            if a != b:
                cm[a, b] = D[np.ix_(y == la, y == lb)].min()
    iu = np.triu_indices(len(X), 1)
    inter = D[iu][diff[iu]]
    return D[diff].min(), cm, np.sort(inter)


def clustered(n, d, c, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * 3
    y = rng.integers(0, c, n)
    X = centers[y] + spread * rng.normal(size=(n, d)) * np.linspace(2, 0.05, d)  # anisotropic: pruning matters
    return X, y


def test_two_points_distance_four_is_exactly_a_quarter():
    r = run([[0.0, 0.0, 0.0], [0.0, 4.0, 0.0]], [0, 1])
    assert r.value == 0.25
    assert r.details["min_interclass_distance"] == 4.0
    assert r.details["offending_pairs"] == [{"i": 0, "j": 1, "label_i": 0, "label_j": 1, "distance": 4.0, "k_f": 0.25}]
    # same labels: no differently labelled pair, K_F = max of zeros = 0 (docs/methods.md §6)
    same = run([[0.0, 0.0], [0.0, 4.0]], [3, 3])
    assert same.value == 0.0 and any("one class" in w for w in same.warnings)


@pytest.mark.parametrize(
    "n,d,c,seed,backend",
    [
        pytest.param(600, 3, 2, 0, "auto", id="low-dim-binary"),
        pytest.param(700, 40, 5, 1, "auto", id="D40-5class"),
        pytest.param(800, 120, 10, 2, "auto", id="D120-projected"),
        pytest.param(800, 120, 10, 2, "torch", id="D120-torch-backend"),
        pytest.param(500, 300, 3, 3, "torch", id="D300-torch"),
    ],
)
def test_exact_equals_brute_force(n, d, c, seed, backend):
    X, y = clustered(n, d, c, seed)
    ref_delta, ref_cm, ref_sorted = brute_force(X, y)
    res = interclass_min(torch.from_numpy(X), torch.from_numpy(y), backend=backend, prune_dims=16, top_k=10)
    assert res.delta == pytest.approx(ref_delta, rel=1e-12)
    np.testing.assert_allclose(res.class_min, ref_cm, rtol=1e-12)
    np.testing.assert_allclose([p[2] for p in res.top_pairs], ref_sorted[:10], rtol=1e-12)
    if d == 120:  # the pruning did prune: far fewer pairs measured than exist
        assert res.stats["survivor_pairs"] < 0.2 * res.stats["all_interclass_pairs"]
    for i, j, dist in res.top_pairs:  # the listed pairs are real, differently labelled and measured exactly
        assert y[i] != y[j]
        assert dist == pytest.approx(np.linalg.norm(X[i] - X[j]), rel=1e-14)
    for a in range(res.labels.size):
        for b in range(res.labels.size):
            if a != b:
                i, j = res.class_argmin[a, b]
                assert y[i] == res.labels[a] and y[j] == res.labels[b]
    # through the estimator: K_F is exactly 1/δ
    r = run(X, y)
    assert r.value == pytest.approx(1.0 / ref_delta, rel=1e-12)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_far_from_origin_with_shared_engine_bounds(backend):
    """Data offset far from the origin (large norms: the certified rounding margins of the engine's embedding
    matter) in float32: the survivors still contain every winning pair, whichever backend searches."""
    X, y = clustered(900, 96, 4, 7)
    X = (X + 1e3).astype(np.float32)
    ref_delta, ref_cm, ref_sorted = brute_force(X.astype(np.float64), y)
    res = interclass_min(torch.from_numpy(X), torch.from_numpy(y), backend=backend, prune_dims=24, top_k=10)
    assert res.delta == pytest.approx(ref_delta, rel=1e-12)
    np.testing.assert_allclose(res.class_min, ref_cm, rtol=1e-12)
    np.testing.assert_allclose([p[2] for p in res.top_pairs], ref_sorted[:10], rtol=1e-12)
    assert res.stats["projection"].endswith("(estimators.knn)") and res.stats["prune_dims"] == 24


def test_float32_input_near_duplicates_are_exact():
    """float32 data with differently labelled near-duplicates: the float32 Gram shortcut would lose the digits."""
    rng = np.random.default_rng(5)
    X = (rng.random((400, 64)) * 100).astype(np.float32)
    X[7] = X[3]
    X[7, 10] += np.float32(1e-3)  # distance ~1e-3 next to norms ~500
    y = rng.integers(0, 3, 400)
    y[7] = (y[3] + 1) % 3
    ref_delta, _, _ = brute_force(X, y)
    r = run(X, y)
    assert r.details["min_interclass_distance"] == pytest.approx(ref_delta, rel=1e-12)
    assert r.details["offending_pairs"][0]["i"] == 3 and r.details["offending_pairs"][0]["j"] == 7


def test_paper_mode_is_bounded_by_exact_and_reproducible():
    X, y = clustered(3000, 30, 4, 7, spread=1.5)
    exact = run(X, y).value
    paper = run(X, y, mode="paper", m=300, n_bootstrap=50, seed=11)
    assert paper.details["m"] == 300
    assert 0 < paper.value <= exact  # a subsample sees a subset of the pairs
    # the paper-mode value is the exact K_F of its own subsample (brute force on the listed pair)
    p0 = paper.details["offending_pairs"][0]
    assert paper.value == pytest.approx(1.0 / np.linalg.norm(X[p0["i"]] - X[p0["j"]]), rel=1e-12)
    lo, hi = paper.ci
    assert lo <= hi and paper.ci_method == "bootstrap percentile"
    assert hi <= exact * (1 + 1e-12)  # every bootstrap resample is a subset of the pairs too
    again = run(X, y, mode="paper", m=300, n_bootstrap=50, seed=11)
    assert again.value == paper.value and again.ci == paper.ci
    # grows (weakly) with m on nested subsamples: the whole set is the largest "subsample"
    full = run(X, y, mode="paper", m=3000, n_bootstrap=0)
    assert full.value == pytest.approx(exact, rel=1e-12) and full.ci is None


def test_paper_mode_stratified_keeps_a_rare_class():
    X, y = clustered(2000, 10, 3, 8)
    y[:] = 0
    y[:5] = 1
    y[5:1000] = 2
    r = run(X, y, mode="paper", m=50, stratify=True, n_bootstrap=0)
    assert r.details["classes"] == [0, 1, 2]
    assert not any("missing" in w for w in r.warnings)


def test_conflicting_duplicates_give_infinite_kf_and_are_listed():
    X, y = clustered(300, 8, 3, 9)
    X[10] = X[20]
    y[10], y[20] = 0, 1
    X[30] = X[40]  # same-label duplicate: not a conflict, just collapsed
    y[30] = y[40] = 2
    r = run(X, y)
    assert r.value == math.inf
    assert r.details["min_interclass_distance"] == 0.0
    cd = r.details["conflicting_duplicates"]
    assert cd["groups"] == 1 and cd["pairs"] == 1
    assert cd["listed"][0]["indices"] == [10, 20] and cd["listed"][0]["labels"] == [0, 1]
    top = r.details["offending_pairs"][0]
    assert (top["i"], top["j"], top["distance"]) == (10, 20, 0.0)
    assert r.details["class_min_distance"][0][1] == 0.0
    assert r.details["duplicates"]["exact_duplicate_rows"] == 2
    assert any("infinite" in w for w in r.warnings)
    # the report layer writes infinity as the string "inf" (valid JSON)
    est = registry.get("label_sharpness")
    entry = result_to_json(est, LabelSharpnessParams(), r, seconds=0.0)
    assert entry["value"] == "inf"
    json.loads(json.dumps(entry, allow_nan=False))


def test_registration_and_input_errors():
    est = registry.get("label_sharpness")
    assert est.needs_labels and est.version == "1.0.0"
    with pytest.raises(EstimatorError, match="needs class labels"):
        run([[0.0], [1.0]], None)
    with pytest.raises(EstimatorError, match="must match"):
        run([[0.0], [1.0]], [0, 1, 1])
    with pytest.raises(EstimatorError, match="NaN/Inf"):
        run([[0.0], [float("nan")]], [0, 1])
    with pytest.raises(EstimatorError, match="integer class"):
        label_sharpness(torch.zeros(2, 1), torch.tensor([0.0, 1.0]), LabelSharpnessParams(), device=CPU)
    with pytest.raises(EstimatorError, match="bad params"):
        est.parse_params({"mode": "fast"})


def test_details_carry_scale_caveat_and_progress():
    X, y = clustered(200, 5, 2, 4)
    seen = []
    r = label_sharpness(
        torch.from_numpy(X),
        torch.from_numpy(y),
        LabelSharpnessParams(),
        device=CPU,
        progress=lambda f, s: seen.append(f),
    )
    assert r.details["scale"]["n_features"] == 5
    assert "value range" in r.details["scale"]["caveat"]
    assert seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
