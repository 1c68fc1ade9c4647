"""Reference data sets shared by the ID-estimator tests: skdim's 24 benchmark manifolds (n=2000, random_state=0),
sklearn's digits and a 10-d Gaussian rotated into R^100 — generated once per test session (nothing downloaded)."""

from __future__ import annotations

import functools

import numpy as np
import skdim
from sklearn.datasets import load_digits

MANIFOLDS = [
    "M1_Sphere",
    "M2_Affine_3to5",
    "M3_Nonlinear_4to6",
    "M4_Nonlinear",
    "M5a_Helix1d",
    "M5b_Helix2d",
    "M6_Nonlinear",
    "M7_Roll",
    "M8_Nonlinear",
    "M9_Affine",
    "M10a_Cubic",
    "M10b_Cubic",
    "M10c_Cubic",
    "M10d_Cubic",
    "M11_Moebius",
    "M12_Norm",
    "M13a_Scurve",
    "M13b_Spiral",
    "Mbeta",
    "Mn1_Nonlinear",
    "Mn2_Nonlinear",
    "Mp1_Paraboloid",
    "Mp2_Paraboloid",
    "Mp3_Paraboloid",
]
DATASETS = MANIFOLDS + ["digits", "gauss10_in_R100"]
NO_TIES = MANIFOLDS + ["gauss10_in_R100"]  # digits has points with r1 = r2


@functools.cache
def all_data() -> dict[str, np.ndarray]:
    data = {
        k: np.asarray(v, dtype=np.float64)
        for k, v in skdim.datasets.BenchmarkManifolds(random_state=0).generate(n=2000).items()
    }
    data["digits"] = load_digits().data.astype(np.float64)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((100, 10)))
    data["gauss10_in_R100"] = rng.standard_normal((2000, 10)) @ q.T
    return data


def data(name: str) -> np.ndarray:
    return all_data()[name]


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)
