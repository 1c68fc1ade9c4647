"""The split self-query (estimators/knn/engine.py: plan_parts, bounds_part, kneighbors_part, merge_parts) and the neighbour table
handed to the estimators (estimators/knn/known.py).

The merged parts are compared bit for bit with the one-call ``kneighbors`` (the same float64 kernel computes every
pair's distance) and with the independent float64 numpy brute force of test_knn_engine.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_knn_engine import brute, check, clustered

import estimators._native as native
import estimators.knn.engine as knn
from estimators.base import EstimatorError
from estimators.id.gride import gride_id
from estimators.id.mle import mle_id
from estimators.id.twonn import twonn_id
from estimators.knn import (
    KNNBounds,
    KNNPart,
    KNNPlan,
    bounds_part,
    kneighbors,
    kneighbors_part,
    known_neighbours,
    merge_parts,
    plan_parts,
)


@pytest.fixture
def small_thresholds(monkeypatch):
    """The pruned symmetric search on small inputs (same code, smaller size gates), as in test_knn_engine.py."""
    for name, v in (
        ("_PRUNE_MIN_PAIRS", 0),
        ("_PRUNE_MIN_REF", 200),
        ("_PRUNE_MIN_DIM", 8),
        ("_CLUSTER_SIZE", 32),
        ("_HOME_NEED", 96),
        ("_FALLBACK_AFTER", 256),
    ):
        monkeypatch.setattr(knn, name, v)


def split(X: torch.Tensor, k: int, parts: int, staged: bool = False, **kw):
    """The plan and its parts; ``staged``: the bounds in a stage of their own (as a fanned-out analysis runs it),
    the bounds parts in reverse order."""
    plan = plan_parts(X, k, parts, bounds=not staged)
    if staged and plan.labels is not None:
        plan = plan.with_bounds([bounds_part(X, k, plan, p) for p in reversed(range(parts))])
    return plan, [kneighbors_part(X, k, plan, p, **kw) for p in range(parts)]


def same(a, b) -> None:
    """Bit for bit: distances and indices."""
    assert torch.equal(a.distances, b.distances) and torch.equal(a.indices, b.indices)


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_symmetric_parts_merge_to_the_one_call_answer_bit_for_bit(small_thresholds, dtype, parts, staged):
    X = torch.from_numpy(clustered(1500, 48, 5, seed=parts)).to(dtype)
    plan, pieces = split(X, 12, parts, staged=staged)
    assert plan.labels is not None and plan.clusters == round(1500 / 32)
    assert all(p.stats["method"] == "pruned-symmetric-part" for p in pieces)
    # every cluster is run by one part; each part chooses one of the plan's ranks, with the plan's bounds
    assert sum(p.stats["part"]["clusters"] for p in pieces) == plan.clusters
    assert all(p.stats["rank"] in plan.ranks for p in pieces) and plan.ranks[-1] == plan.basis.shape[1]
    assert plan.bounds.shape == (1500,) and bool(torch.isfinite(plan.bounds).all())
    merged = merge_parts(pieces, 1500, 12)
    same(merged, kneighbors(X, 12))
    check(merged, *brute(X.numpy(), 12))


def test_plan_shares_the_pairs_evenly_between_interleaved_parts(small_thresholds):
    """Recounted here from the plan's grouping: a cluster at position s (clusters in label order) meets its rows ×
    the n − s columns from s on; each part's total stays within one cluster's pairs of every other's, and the parts
    alternate along the order (not one range each)."""
    X = torch.from_numpy(clustered(1500, 48, 5, seed=4))
    for parts in (2, 3):
        plan = plan_parts(X, 12, parts)
        counts = np.bincount(plan.labels.numpy(), minlength=plan.clusters)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pairs = counts * (1500 - starts)
        owner = plan.owner.numpy()
        load = np.array([pairs[owner == p].sum() for p in range(parts)])
        assert load.sum() == pairs.sum() and load.max() - load.min() <= pairs.max()
        assert len(set(owner[: 2 * parts].tolist())) == parts


def test_parts_with_the_torch_exact_kernel_and_forced_forms_are_exact(small_thresholds, monkeypatch):
    X = torch.from_numpy(clustered(1200, 40, 4, seed=7))
    ref = brute(X.numpy(), 9)
    for method in ("pruned", "brute"):
        check(merge_parts(split(X, 9, 3, method=method)[1], 1200, 9), *ref)
    monkeypatch.setattr(native, "_lib", None)  # the torch exact distances and merges
    pieces = split(X, 9, 3)[1]
    assert pieces[0].stats["exact_kernel"] == "torch"
    merged = merge_parts(pieces, 1200, 9)
    check(merged, *ref)
    same(merged, kneighbors(X, 9))


def test_parts_run_with_different_budgets_and_threads_still_meet_every_pair_once(small_thresholds):
    """The split depends on the plan alone: a part run with a small memory budget (other row blocks) or another
    thread count gives pieces that still merge to the exact answer."""
    X = torch.from_numpy(clustered(1400, 48, 5, seed=13))
    plan = plan_parts(X, 10, 3)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = kneighbors_part(X, 10, plan, 0, memory_budget_mb=16)
        torch.set_num_threads(1)
        b = kneighbors_part(X, 10, plan, 1)
        c = kneighbors_part(X, 10, plan, 2, memory_budget_mb=64)
    finally:
        torch.set_num_threads(saved)
    same(merge_parts([c, a, b], 1400, 10), kneighbors(X, 10))  # any order


def test_duplicates_and_lattice_ties_are_decided_as_in_the_one_call_search(small_thresholds):
    base = clustered(500, 32, 4, seed=8)
    X = np.concatenate([base, base[:80], base[:80], base[300:310]])
    X = torch.from_numpy(X[np.random.default_rng(1).permutation(len(X))])
    merged = merge_parts(split(X, 6, 3)[1], X.shape[0], 6)
    same(merged, kneighbors(X, 6))
    check(merged, *brute(X.numpy(), 6))
    assert (merged.distances[:, 0] == 0).sum() >= 160
    g = np.stack(np.meshgrid(np.arange(8), np.arange(8), np.arange(8), indexing="ij"), -1).reshape(-1, 3)
    L = torch.from_numpy(g[np.random.default_rng(2).permutation(len(g))].astype(np.float32))
    knn._PRUNE_MIN_DIM = 2  # restored by monkeypatch (small_thresholds set it)
    plan, pieces = split(L, 12, 2)
    assert plan.labels is not None
    check(merge_parts(pieces, 512, 12), *brute(L.numpy(), 12))


@pytest.mark.parametrize("parts", [1, 4, 7])
def test_row_block_plan_for_small_inputs(parts):
    """Below the pruning gates the plan is blocks of consecutive query rows against all rows (brute force)."""
    X = torch.randn(300, 6, generator=torch.Generator().manual_seed(parts), dtype=torch.float64)
    plan, pieces = split(X, 7, parts)
    assert plan.labels is None
    assert [p.rows.tolist() for p in pieces] == [
        list(range(i * 300 // parts, (i + 1) * 300 // parts)) for i in range(parts)
    ]
    same(merge_parts(pieces, 300, 7), kneighbors(X, 7))
    tiny = split(X[:5], 2, 8)[1]  # more parts than rows: empty blocks are fine
    same(merge_parts(tiny, 5, 2), kneighbors(X[:5], 2))


def test_more_parts_than_clusters(small_thresholds):
    X = torch.from_numpy(clustered(400, 16, 3, seed=2))
    plan, pieces = split(X, 5, 20)
    assert plan.clusters < 20 and sum(p.rows.numel() == 0 for p in pieces) > 0
    same(merge_parts(pieces, 400, 5), kneighbors(X, 5))


def test_a_missing_part_is_refused_a_repeated_one_changes_nothing_a_foreign_one_is_refused(small_thresholds):
    X = torch.from_numpy(clustered(900, 24, 4, seed=5))
    _, pieces = split(X, 8, 3)
    with pytest.raises(ValueError, match="fewer than 8 neighbours; a part is missing"):
        merge_parts(pieces[:2], 900, 8)
    # a re-delivered part lists the same pairs with the same distances: each pair counts once
    same(merge_parts([*pieces, pieces[1]], 900, 8), kneighbors(X, 8))
    # the same pairs at other distances cannot come from the same plan and data
    p = pieces[1]
    foreign = KNNPart(p.rows, p.distances * (1 + 1e-12), p.indices)
    with pytest.raises(ValueError, match="two distances"):
        merge_parts([*pieces, foreign], 900, 8)
    with pytest.raises(ValueError, match="does not fit"):
        merge_parts(pieces, 900, 7)


def test_parts_take_the_plans_coordinates_or_project_when_they_are_not_theirs(small_thresholds, monkeypatch):
    """The plan stores every row's embedding at its rank; a part loads it instead of projecting every row again,
    unless it has none (a plan stored without them) or they are about another mean: the part then projects itself.
    The answer is the same every way."""
    X = torch.from_numpy(clustered(1000, 32, 4, seed=8)).float()
    plan = plan_parts(X, 6, 2)
    zz, a2, z2, mu = plan.coords
    assert zz.shape == (1000, plan.basis.shape[1]) and zz.dtype == torch.float32
    assert a2.shape == (1000,) and z2.shape == (1000, len(plan.ranks)) and mu.shape == (32,)
    assert bool((z2 <= a2.unsqueeze(1) * (1 + 1e-12)).all()) and bool((z2.diff(dim=1) >= 0).all())
    projected = []
    real = knn._Prefixes.project

    def spy(self, known=None):
        real(self, known)
        projected.append(known is None or self.zz is not known[0])

    monkeypatch.setattr(knn._Prefixes, "project", spy)
    expected = kneighbors(X, 6)
    for p, computes in (
        (plan, False),
        (dataclasses.replace(plan, coords=None), True),
        (dataclasses.replace(plan, coords=(zz, a2, z2, mu + 1e-9)), True),
    ):
        projected.clear()
        same(merge_parts([kneighbors_part(X, 6, p, i) for i in range(2)], 1000, 6), expected)
        assert projected == [computes, computes]


def test_a_plan_past_the_coordinates_limit_leaves_them_to_the_parts(small_thresholds, monkeypatch):
    """Past ``_COORDS_MAX_BYTES`` the plan stores no coordinates (every part would read them); the parts project."""
    X = torch.from_numpy(clustered(1000, 32, 4, seed=8)).float()
    monkeypatch.setattr(knn, "_COORDS_MAX_BYTES", 1000 * 4)  # less than 1000 rows at any rank ≥ 2
    plan = plan_parts(X, 6, 2)
    assert plan.labels is not None and plan.coords is None
    assert not any(name in plan.arrays() for name in ("coords", "centred_sq", "coords_sq", "mean"))
    same(merge_parts([kneighbors_part(X, 6, plan, i) for i in range(2)], 1000, 6), kneighbors(X, 6))


def test_plan_and_part_round_trip_through_plain_arrays(small_thresholds, tmp_path):
    X = torch.from_numpy(clustered(700, 24, 4, seed=6))
    plan = plan_parts(X, 5, 2)
    np.savez(tmp_path / "plan.npz", **plan.arrays())
    with np.load(tmp_path / "plan.npz", allow_pickle=False) as z:
        again = KNNPlan.from_arrays(dict(z))
    assert torch.equal(again.labels, plan.labels) and (again.n, again.parts, again.clusters) == (700, 2, plan.clusters)
    piece = kneighbors_part(X, 5, again, 1)
    np.savez(tmp_path / "part.npz", **piece.arrays())
    with np.load(tmp_path / "part.npz", allow_pickle=False) as z:
        back = KNNPart.from_arrays(dict(z))
    assert torch.equal(back.rows, piece.rows) and torch.equal(back.distances, piece.distances)
    assert torch.equal(again.bounds, plan.bounds) and torch.equal(again.basis, plan.basis)
    assert torch.equal(again.owner, plan.owner) and again.ranks == plan.ranks and again.homes is None
    assert all(torch.equal(a, b) for a, b in zip(again.coords, plan.coords, strict=True))
    arrays = plan.arrays()
    bad_bounds = arrays["bounds"].copy()
    bad_bounds[3] = np.nan
    for bad in (
        {"clusters": np.asarray(1)},
        {"bounds": bad_bounds},
        {"owner": np.full_like(arrays["owner"], 2)},
        {"basis": arrays["basis"][0]},
        {"ranks": arrays["ranks"][::-1]},
        {"ranks": arrays["ranks"][:-1]},
        {"coords": arrays["coords"][:, :-1]},
        {"coords_sq": arrays["coords_sq"][:, :-1]},
        {"centred_sq": -arrays["centred_sq"]},
        {"mean": arrays["mean"][:-1]},
    ):
        with pytest.raises(ValueError, match="not a kNN plan"):
            KNNPlan.from_arrays({**arrays, **bad})
    with pytest.raises(ValueError, match="without its basis, ranks, owners and bounds or homes"):
        KNNPlan.from_arrays({name: v for name, v in arrays.items() if name != "bounds"})
    # a plan that leaves its bounds to a stage of their own carries the home clusters instead, as arrays too
    staged = plan_parts(X, 5, 2, bounds=False)
    assert staged.needs_bounds and staged.bounds is None and "bounds" not in staged.arrays()
    np.savez(tmp_path / "staged.npz", **staged.arrays())
    with np.load(tmp_path / "staged.npz", allow_pickle=False) as z:
        staged_again = KNNPlan.from_arrays(dict(z))
    assert all(torch.equal(a, b) for a, b in zip(staged_again.homes, staged.homes, strict=True))
    found = bounds_part(X, 5, staged_again, 0)
    np.savez(tmp_path / "bounds.npz", **found.arrays())
    with np.load(tmp_path / "bounds.npz", allow_pickle=False) as z:
        found_again = KNNBounds.from_arrays(dict(z))
    assert torch.equal(found_again.rows, found.rows) and torch.equal(found_again.values, found.values)
    arrays = staged.arrays()
    for bad in (
        {"home_ptr": arrays["home_ptr"][:-1]},
        {"home_idx": np.full_like(arrays["home_idx"], staged.clusters)},
        {"home_ptr": np.zeros_like(arrays["home_ptr"])},
    ):
        with pytest.raises(ValueError, match="not a kNN plan"):
            KNNPlan.from_arrays({**arrays, **bad})
    with pytest.raises(ValueError, match="not kNN bounds"):
        KNNBounds.from_arrays({**found.arrays(), "bounds": found.values.numpy().astype(np.float32)})
    with pytest.raises(ValueError, match="not a kNN part"):
        KNNPart.from_arrays({**piece.arrays(), "distances": piece.distances.numpy().astype(np.float32)})


def test_bounds_stage_gives_the_plans_own_bounds_and_refuses_incomplete_or_foreign_parts(small_thresholds):
    """The bounds stage computes, part by part, the very bounds the one-piece plan computes (the same home clusters
    and kernel per row, bit for bit). Every row comes from one part; a missing part, or two parts that disagree
    (another plan's), are refused, and a repeated one changes nothing. A part cannot run before the bounds are in."""
    X = torch.from_numpy(clustered(1500, 48, 5, seed=9))
    whole = plan_parts(X, 12, 3)
    staged = plan_parts(X, 12, 3, bounds=False)
    assert torch.equal(staged.labels, whole.labels) and staged.homes is not None and whole.homes is None
    found = [bounds_part(X, 12, staged, p) for p in range(3)]
    rows = torch.cat([f.rows for f in found])
    assert rows.numel() == 1500 and torch.equal(rows.sort().values, torch.arange(1500))
    assert all(abs(f.rows.numel() - 500) <= 40 for f in found)  # equal ranges of positions, whole blocks
    assert torch.equal(staged.with_bounds(found).bounds, whole.bounds)
    assert torch.equal(staged.with_bounds([*found, found[0]]).bounds, whole.bounds)
    with pytest.raises(ValueError, match="rows have no bound"):
        staged.with_bounds(found[1:])
    off = KNNBounds(found[1].rows, found[1].values * 1.5)
    with pytest.raises(ValueError, match="two different bounds"):
        staged.with_bounds([*found, off])
    with pytest.raises(ValueError, match="needs no bounds"):
        whole.with_bounds(found)
    with pytest.raises(EstimatorError, match="has no bounds yet"):
        kneighbors_part(X, 12, staged, 0)
    with pytest.raises(EstimatorError, match="needs no bounds"):
        bounds_part(X, 12, whole, 0)


def test_bad_arguments_are_explained(small_thresholds):
    X = torch.from_numpy(clustered(300, 16, 3, seed=1))
    with pytest.raises(EstimatorError, match="parts must be a positive integer"):
        plan_parts(X, 3, 0)
    with pytest.raises(EstimatorError, match=r"k must be an integer in \[1, 299\]"):
        plan_parts(X, 300, 2)
    plan = plan_parts(X, 3, 2)
    with pytest.raises(EstimatorError, match=r"part must be an integer in \[0, 1\]"):
        kneighbors_part(X, 3, plan, 2)
    with pytest.raises(EstimatorError, match="the plan is for 300 rows, the reference has 299"):
        kneighbors_part(X[:299], 3, plan, 0)
    with pytest.raises(EstimatorError, match="the plan is for 16 features, the reference has 15"):
        kneighbors_part(X[:, :15], 3, plan, 0)
    with pytest.raises(EstimatorError, match=r"bounds_part: part must be an integer in \[0, 1\]"):
        bounds_part(X, 3, plan_parts(X, 3, 2, bounds=False), -1)


# ------------------------------------------------------------------------------------------- known neighbours


def test_known_table_answers_equal_data_and_nothing_else():
    X = torch.randn(400, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = kneighbors(X, 10)
    with known_neighbours(X, full.distances, full.indices):
        hit = kneighbors(X.clone(), 4)  # equal values, another tensor (an estimator's de-duplicated copy)
        assert hit.stats["method"] == "known"
        assert torch.equal(hit.distances, full.distances[:, :4]) and torch.equal(hit.indices, full.indices[:, :4])
        qi = torch.tensor([5, 1, 399])
        sub = kneighbors(X, 3, query_index=qi)
        assert sub.stats["method"] == "known" and torch.equal(sub.query_index, qi)
        same(sub, kneighbors(X, 10).__class__(full.distances[qi, :3], full.indices[qi, :3], qi))
        assert kneighbors(X, 11).stats["method"] == "brute"  # more neighbours than the table has
        other = X.clone()
        other[7, 2] += 1e-12
        assert kneighbors(other, 4).stats["method"] == "brute"  # different data
        assert kneighbors(X[:399], 4).stats["method"] == "brute"
        assert kneighbors(X, 4, queries=X[:3]).stats["method"] == "brute"  # a separate query set
    assert kneighbors(X, 4).stats["method"] == "brute"  # outside the block
    with pytest.raises(ValueError, match="does not describe 400 rows"):
        with known_neighbours(X, full.distances[:5], full.indices[:5]):
            pass


def test_id_estimators_on_a_known_table_give_the_same_results():
    """mle, twonn and gride read their neighbours from the table (duplicates removed first, as always) and return
    exactly what they return when they search themselves."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(700, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 12, generator=g, dtype=torch.float64)
    X = torch.cat([base, base[:30]])  # 30 duplicates, removed before any search
    Xu = base  # the distinct rows, in the order the estimators keep them
    table = kneighbors(Xu, 64)
    plain = [mle_id(X, k=10), twonn_id(X), gride_id(X)]
    calls = []
    search = knn._search
    with known_neighbours(Xu, table.distances, table.indices):
        knn._search = lambda *a, **kw: calls.append(a[1]) or search(*a, **kw)
        try:
            served = [mle_id(X, k=10), twonn_id(X), gride_id(X)]
        finally:
            knn._search = search
    # only twonn's decimation levels (subsets of the data) searched; the full self-queries came from the table
    assert calls and set(calls) == {2}
    for a, b in zip(plain, served):
        assert a.value == b.value and a.details == b.details and a.warnings == b.warnings
