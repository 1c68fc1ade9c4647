"""taskgauge.api: the scikit-learn style classes and analyse().

References: skdim 0.5.0 (``skdim.id.MLE``, ``skdim.id.TwoNN``) on float64 data, to 1e-9 relative; a brute-force
minimum inter-class distance (scipy ``cdist``) for label sharpness; the registry's params models for the
constructor signatures; and the estimators themselves for analyse() (same function, so the same number).
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import skdim
from scipy.spatial.distance import cdist
from sklearn.base import clone

from estimators import registry
from taskgauge.api import MLE, Gride, InductiveBias, LabelSharpness, Report, TwoNN, analyse

REL = 1e-9


def _gauss5_in_r20(seed: int = 0, n: int = 1500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((20, 5)))
    return rng.standard_normal((n, 5)) @ q.T + rng.standard_normal(20)


def _manifold(name: str, n: int = 1500) -> np.ndarray:
    bm = skdim.datasets.BenchmarkManifolds(random_state=0)
    d, dim, _ = bm._dict_truth[name]  # skdim 0.5.0's generate(name=...) needs them passed explicitly
    return np.asarray(bm.generate(name=name, n=n, dim=dim, d=d), dtype=np.float64)


DATA = {
    "gauss5_in_R20": lambda: _gauss5_in_r20(),
    "M1_Sphere": lambda: _manifold("M1_Sphere"),  # 10-d sphere in R^11
    "M7_Roll": lambda: _manifold("M7_Roll"),  # 2-d swiss roll in R^3
}


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("name", list(DATA))
def test_mle_equals_skdim(name):
    X = DATA[name]()
    assert X.dtype == np.float64
    ours = MLE().fit(X)
    ref = skdim.id.MLE().fit(X).dimension_
    assert rel(ours.dimension_, ref) < REL, (ours.dimension_, ref)
    assert ours.value_ == ours.dimension_ == ours.result_.value


@pytest.mark.parametrize("name", ["gauss5_in_R20", "M1_Sphere"])
@pytest.mark.parametrize(
    "kw", [{}, {"discard": 0.2}, {"discard_fraction": 0.2}], ids=["default", "discard", "fraction"]
)
def test_twonn_equals_skdim(name, kw):
    X = DATA[name]()
    frac = kw.get("discard", kw.get("discard_fraction", 0.1))
    ours = TwoNN(decimation=False, **kw).fit(X).dimension_
    ref = skdim.id.TwoNN(discard_fraction=frac).fit(X).dimension_
    assert rel(ours, ref) < REL, (ours, ref)


def test_same_function_as_the_pipeline_on_different_params():
    X = _gauss5_in_r20(seed=3, n=800)
    a = MLE(k=10, normalizer="k-2").fit(X).dimension_
    b = MLE(k=10).fit(X).dimension_
    # METHODS identity: on the same neighbours the k−2 value is exactly (k−2)/(k−1) times the k−1 value
    assert rel(a, b * 8 / 9) < 1e-12


@pytest.mark.parametrize("kw", [{"discard_fraction": 0.1}, {"discard": 0.1}, {"discard": 0.25, "seed": 3}])
def test_clone_round_trips(kw):
    est = TwoNN(**kw)
    twin = clone(est)
    assert twin is not est
    assert twin.get_params() == est.get_params()
    for key, value in kw.items():
        assert twin.get_params()[key] == value


def test_set_params_and_alias_conflict():
    X = _gauss5_in_r20(seed=1, n=600)
    est = TwoNN(decimation=False).set_params(discard=0.3)
    assert est.discard == 0.3
    assert rel(est.fit(X).dimension_, skdim.id.TwoNN(discard_fraction=0.3).fit(X).dimension_) < REL
    with pytest.raises(ValueError, match="disagree"):
        TwoNN(discard=0.3, discard_fraction=0.2).fit(X)


@pytest.mark.parametrize(
    "cls,name",
    [
        (MLE, "mle"),
        (TwoNN, "twonn"),
        (Gride, "gride"),
        (LabelSharpness, "label_sharpness"),
        (InductiveBias, "inductive_bias"),
    ],
)
def test_constructor_mirrors_the_params_model(cls, name):
    fields = registry.get(name).params_model.model_fields
    sig = inspect.signature(cls)
    extra = {"device"} | set(cls._aliases)
    assert set(sig.parameters) == set(fields) | extra
    for field, info in fields.items():
        assert sig.parameters[field].default == info.get_default(call_default_factory=True), field
    assert set(cls().get_params()) == set(fields) | extra


def test_bad_arguments():
    with pytest.raises(TypeError, match="unexpected keyword"):
        MLE(neighbours=10)
    with pytest.raises(ValueError, match="k"):
        MLE(k=1).fit(_gauss5_in_r20(n=100))  # validated at fit, by the params model
    with pytest.raises(ValueError, match="labels"):
        LabelSharpness().fit(_gauss5_in_r20(n=100))


def test_label_sharpness_against_brute_force_with_string_labels():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 6))
    y = np.where(X[:, 0] + 0.3 * rng.standard_normal(300) > 0, "cat", "dog")
    est = LabelSharpness().fit(X, y)
    d = cdist(X[y == "cat"], X[y == "dog"]).min()
    assert rel(est.sharpness_, 1.0 / d) < 1e-12
    assert list(est.classes_) == ["cat", "dog"]


def test_analyse_returns_the_requested_results():
    X = _gauss5_in_r20(seed=2, n=700)
    y = (X[:, 0] > 0).astype(int)
    rep = analyse(X, y, estimators=("mle", "twonn", "label_sharpness"), params={"mle": {"k": 10}}, device="cpu")
    assert isinstance(rep, Report)
    assert list(rep.results) == ["mle", "twonn", "label_sharpness"]
    assert rep.results["mle"]["params"]["k"] == 10
    assert rep.values["mle"] == MLE(k=10, device="cpu").fit(X).dimension_
    assert rep.values["twonn"] == TwoNN(device="cpu").fit(X).dimension_
    assert rep.values["label_sharpness"] == LabelSharpness(device="cpu").fit(X, y).sharpness_
    doc = json.loads(rep.to_json())
    assert doc["dataset"]["n_samples"] == 700 and doc["dataset"]["n_classes"] == 2
    table = rep.table()
    for name in ("mle", "twonn", "label_sharpness"):
        assert name in table
    assert f"{rep.values['mle']:.4g}" in table


def test_analyse_reads_a_comma_separated_list_like_the_cli():
    X = _gauss5_in_r20(seed=4, n=300)
    rep = analyse(X, estimators="mle,twonn", device="cpu")
    assert list(rep.results) == ["mle", "twonn"]
    with pytest.raises(ValueError, match="not among"):
        analyse(X, estimators="mle", params={"twonn": {}}, device="cpu")
