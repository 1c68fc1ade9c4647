"""The order a fanned-out analysis sends its shards in (costliest first, by the registry's ``cost``), and the one
dataset load + duplicate check per worker process that its shards and its report assembly share
(workers/fanout.py), driven in this process without Celery as in test_fanout_knn.py."""

from __future__ import annotations

from test_fanout_knn import REQUESTS, assert_same_results, unsharded
from test_fanout_knn import world as world  # noqa: PLC0414 - the fixture, on SQLite and PostgreSQL

import estimators.knn.duplicates as duplicates
from estimators import registry
from workers import fanout


def test_costliest_first_orders_by_the_registry_cost_unknown_first():
    shape = [20000, 28, 28]
    names = ["label_sharpness", "mle", "inductive_bias", "gride", "twonn"]
    # mle's bad params: unknown cost (its shard reports them), like inductive_bias's missing hook
    requests = {"mle": {"k": "many"}, "gride": {}, "twonn": {}}
    assert registry.get("inductive_bias").cost is None
    assert fanout.costliest_first(names, requests, shape) == [
        "mle",
        "inductive_bias",
        "twonn",
        "gride",
        "label_sharpness",
    ]
    # ties keep the given order; the costs are those of the hooks at n = 20000, d = 784
    n, d = 20000, 784
    costs = {name: registry.get(name).cost(registry.get(name).parse_params({}), n, d) for name in REQUESTS}
    assert costs["mle"] == costs["gride"] == n * n * d and costs["label_sharpness"] == n * n * d / 2
    assert 1.5 * n * n * d < costs["twonn"] < 2 * n * n * d  # the decimation's subsets: N/2 × 2, N/4 × 4, …
    assert fanout.costliest_first(["gride", "mle"], {}, shape) == ["gride", "mle"]
    assert fanout.costliest_first(["mle", "gride"], {}, shape) == ["mle", "gride"]


def test_shards_are_sent_costliest_first_and_share_one_load(world, monkeypatch):
    """Whatever order the database keeps the requests in (PostgreSQL's JSONB: mle, gride, twonn,
    label_sharpness), twonn is sent first and label_sharpness last. Delivered in this one process, the dataset is
    read and its duplicates hashed once for the four shards and the assembly; the values are the pipeline's."""
    monkeypatch.setattr(world.settings, "KNN_SHARD_ROWS", 0)  # one shard per estimator, no split kNN
    reference = unsharded(world)
    loads, hashed = [], []
    real_load, real_lookup = fanout.load_dataset, duplicates._lookup

    def load(*args, **kw):
        loads.append(1)
        return real_load(*args, **kw)

    def lookup(X):
        hit = real_lookup(X)
        if hit is None and X.shape[0] == world.dataset.n_samples:
            hashed.append(1)  # exact_duplicates hashes the full data
        return hit

    monkeypatch.setattr(fanout, "load_dataset", load)
    monkeypatch.setattr(duplicates, "_lookup", lookup)
    fanout._last.clear()
    aid = world.analysis(dict(reversed(list(REQUESTS.items()))))
    keys = [k for _, k in world.sent]
    assert keys[0] == "est:twonn" and keys[-1] == "est:label_sharpness"
    assert sorted(keys[1:3]) == ["est:gride", "est:mle"]
    ran = world.deliver()
    assert [k for k, _ in ran] == keys and ran[-1][1] == "assembled: succeeded"
    assert len(loads) == 1 and len(hashed) == 1
    assert fanout._last == {}  # the assembly let the dataset go
    report = world.report(aid)
    assert_same_results(report, reference)
    assert (
        report["dataset"]["duplicates"]
        == reference["dataset"]["duplicates"]
        == {
            "exact": 20,
            "conflicting_labels": 0,
        }
    )
