"""Request limits in the pipeline (issue 15): the parameter count of a model spec, computed before anything is
built, agrees with the built network; a too-large spec is refused by ``plan`` (the worker's path too) without
allocating it; ``memory_budget_mb`` is clamped to the operator's limit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from estimators.base import EstimatorError
from estimators.models import build_model, count_params, spec_param_count
from taskgauge.pipeline import DataFacts, Limits, plan

SPECS = [
    ({"arch": "mlp", "hidden": [200, 200]}, (784,), 10),
    ({"arch": "mlp", "hidden": []}, (3, 4, 5), 3),
    ({"arch": "mlp", "hidden": [7, 1, 9], "activation": "tanh"}, (2,), 1),
    ({"arch": "lenet"}, (1, 28, 28), 10),
    ({"arch": "lenet"}, (3, 32, 30), 7),
    ({"arch": "cnn", "channels": [16, 32], "hidden": [50]}, (3, 9, 9), 4),
    ({"arch": "cnn", "channels": [4, 4, 4, 4, 4], "kernel_size": 5}, (1, 5, 3), 2),
    ({"arch": "resnet", "depth": 8}, (3, 16, 16), 10),
    ({"arch": "resnet", "depth": 10, "norm": "none", "width": 8}, (1, 12, 12), 5),
    ({"arch": "resnet", "depth": 18, "width": 4, "groups": 2}, (2, 8, 8), 3),
    ({"arch": "resnet", "depth": 14, "width": 8, "groups": 8}, (3, 8, 8), 2),
    ({"arch": "resnet", "depth": 20, "width": 4, "groups": 4, "norm": "none"}, (1, 6, 6), 11),
]


@pytest.mark.parametrize("spec, shape, n_classes", SPECS, ids=[f"{s['arch']}-{i}" for i, (s, _, _) in enumerate(SPECS)])
def test_spec_param_count_equals_the_built_network(spec, shape, n_classes):
    assert spec_param_count(spec, shape, n_classes) == count_params(build_model(spec, shape, n_classes))


def test_spec_param_count_of_a_huge_mlp_is_exact_without_building():
    hidden = [65536] * 64
    widths = [1000] + hidden + [10]
    expected = sum(i * o + o for i, o in zip(widths, widths[1:]))
    assert spec_param_count({"arch": "mlp", "hidden": hidden}, (1000,), 10) == expected > 2.7e11


def test_plan_refuses_a_too_large_model_before_building_it():
    """A 588M-parameter spec (2.3 GB of float32 per copy) is refused by plan(), the worker's first step, and the
    process's peak memory does not move (measured in a fresh process: ru_maxrss before and after)."""
    code = textwrap.dedent("""
        import resource, numpy as np, torch
        from estimators.base import EstimatorError
        from taskgauge.pipeline import DataFacts, Limits, plan
        spec = {"arch": "mlp", "hidden": [16384, 16384, 16384]}   # 587,415,562 parameters on 3x32x32, 10 classes
        facts = DataFacts(has_labels=True, n_samples=100, input_shape=(3, 32, 32), n_classes=10)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            plan({"subspace": {}}, facts, model_spec=spec, limits=Limits(max_model_params=50_000_000))
        except EstimatorError as exc:
            print("refused", "587,415,562 parameters" in str(exc))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("grew_kb", after - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert "refused True" in out, out
    grew_kb = int(out.split("grew_kb")[1])
    assert grew_kb < 64 * 1024, out  # building it would have taken > 2,000,000 kB


def test_limit_is_inclusive_and_unchecked_without_a_shape():
    spec = {"arch": "mlp", "hidden": [4]}
    n = spec_param_count(spec, (6,), 2)
    facts = DataFacts(has_labels=True, n_samples=100, input_shape=(6,), n_classes=2)
    plan({"subspace": {}}, facts, model_spec=spec, limits=Limits(max_model_params=n))
    with pytest.raises(EstimatorError, match="parameters"):
        plan({"subspace": {}}, facts, model_spec=spec, limits=Limits(max_model_params=n - 1))


@pytest.mark.parametrize(
    "limits, asked, effective",
    [
        (Limits(memory_budget_mb=None), 10**6, 1024),
        (Limits(memory_budget_mb=None), 100, 100),
        (Limits(memory_budget_mb=64), 10**6, 64),
        (Limits(memory_budget_mb=64), 32, 32),
    ],
)
def test_memory_budget_clamp(limits, asked, effective):
    planned = plan({"mle": {"memory_budget_mb": asked}}, None, limits=limits)
    assert planned["mle"].params.memory_budget_mb == effective


def test_nan_and_inf_params_are_refused():
    for bad in (float("nan"), float("inf")):
        with pytest.raises(EstimatorError):
            plan({"twonn": {"discard_fraction": bad}}, None, limits=Limits())


def test_dataset_facts_of_a_canonical_dataset_carry_its_shape():
    from taskgauge.datasets.canonical import CanonicalDataset

    data = CanonicalDataset(X=np.zeros((5, 1, 4, 4), np.float32), y=np.array([0, 1, 0, 1, 2]), classes=["a", "b", "c"])
    facts = DataFacts.of(data)
    assert facts.input_shape == (1, 4, 4) and facts.n_classes == 3
