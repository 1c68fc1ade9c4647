"""taskgauge.pipeline.plan: validation and the memory-budget default shared by the CLI and the worker."""

import numpy as np
import pytest

from estimators.base import EstimatorError
from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.pipeline import DEFAULT_ESTIMATORS, plan


def _data(labels: bool = True) -> CanonicalDataset:
    rng = np.random.default_rng(0)
    return CanonicalDataset(
        X=rng.normal(size=(50, 4)).astype(np.float32), y=(np.arange(50) % 2).astype(np.int64) if labels else None
    )


def test_memory_budget_is_a_default_that_a_request_overrides():
    planned = plan({"mle": {}, "twonn": {"memory_budget_mb": 64}}, _data(), memory_budget_mb=256)
    assert planned["mle"].params.memory_budget_mb == 256
    assert planned["twonn"].params.memory_budget_mb == 64


def test_without_a_budget_the_estimators_keep_their_own_default():
    planned = plan({"mle": {}}, _data())
    assert planned["mle"].params.memory_budget_mb == type(planned["mle"].params)().memory_budget_mb


def test_default_estimators_and_label_check():
    assert tuple(plan(None, _data())) == DEFAULT_ESTIMATORS
    with pytest.raises(EstimatorError, match="needs class labels"):
        plan({"label_sharpness": {}}, _data(labels=False))


def test_duplicates_are_found_once_per_analysis(monkeypatch):
    """The pipeline hashes the rows once; mle, twonn, gride and label_sharpness reuse that answer
    (estimators.knn.known_duplicates) instead of hashing the same data four more times."""
    import numpy as np
    import torch

    from estimators.knn import duplicates
    from taskgauge.datasets.canonical import CanonicalDataset
    from taskgauge.pipeline import DatasetInfo, run_pipeline

    hashed: list[int] = []
    real = duplicates.Duplicates

    def counting(*args, **kw):  # built only at the end of an actual hashing pass (a known answer is returned as is)
        hashed.append(1)
        return real(*args, **kw)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    X[10] = X[3]  # one duplicate row
    data = CanonicalDataset(X=X, y=(X[:, 0] > 0).astype(np.int64), classes=["a", "b"], meta={})
    monkeypatch.setattr(duplicates, "Duplicates", counting)
    report = run_pipeline(
        data,
        {"mle": {}, "twonn": {}, "gride": {}, "label_sharpness": {}},
        info=DatasetInfo("d"),
        device=torch.device("cpu"),
    )
    assert report["dataset"]["duplicates"]["exact"] == 1
    assert len(hashed) == 1, f"rows hashed {len(hashed)} times"


def test_service_requests_cannot_name_files_on_the_server():
    """A request may use the packaged MiniLM, never a model directory or weights file of its own choosing."""
    import pytest

    from estimators.base import EstimatorError
    from taskgauge.pipeline import DataFacts, validate_requests

    facts = DataFacts(has_labels=True, n_samples=100)
    ok = validate_requests({"subspace": {"model": {"arch": "pretrained", "source": "minilm"}}}, facts)
    assert ok["subspace"]["model"]["source"] == "minilm"
    with pytest.raises(EstimatorError, match="packaged model only"):
        validate_requests({"subspace": {"model": {"arch": "pretrained", "source": "local", "path": "/etc"}}}, facts)
    with pytest.raises(EstimatorError, match="cannot be set in a request"):
        validate_requests({"repr_id": {"model": {"arch": "mlp", "hidden": [8]}, "weights": "/etc/passwd"}}, facts)
