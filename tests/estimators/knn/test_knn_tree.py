"""The k-d tree path of the kNN engine (estimators/knn/tree.py) for low-dimensional data.

References: the engine's own brute force (``method="brute"``, bit for bit: the tree only proposes candidates, the
distances come from the same exact kernel) and the independent float64 numpy brute force of test_knn_engine.py;
for mle, skdim's ``MLE`` on the same float64 array (1e-9 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_knn_engine import brute, check

import estimators.knn.tree as tree
from estimators.id.mle import mle_id
from estimators.knn import kneighbors

N = 9000  # above the tree's size gate (8192)


def same(a, b) -> None:
    assert torch.equal(a.distances, b.distances) and torch.equal(a.indices, b.indices)


def check_some(r, X: torch.Tensor, k: int, rows: int = 600) -> None:
    """The independent numpy brute force on a random subset of the query rows (all of them take a minute)."""
    pick = np.sort(np.random.default_rng(99).choice(X.shape[0], rows, replace=False))
    ref_d, ref_i = brute(X.numpy(), k, query_index=pick)
    np.testing.assert_array_equal(r.indices.numpy()[pick], ref_i)
    np.testing.assert_allclose(r.distances.numpy()[pick], ref_d, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_low_dimensional_data_takes_the_tree_and_gets_the_brute_force_answer(dtype):
    X = torch.from_numpy(np.random.default_rng(0).random((N, 3))).to(dtype)
    r = kneighbors(X, 10)
    assert r.stats["method"] == "tree" and r.stats["tree"]["used"]
    assert r.stats["tree"]["sample_dimension"] < 4 and r.stats["tree"]["recomputed_rows"] == 0
    same(r, kneighbors(X, 10, method="brute"))
    check_some(r, X, 10)


def test_anchor_rows_take_the_tree_too():
    X = torch.from_numpy(np.random.default_rng(1).normal(size=(N, 4)))
    qi = torch.from_numpy(np.random.default_rng(2).choice(N, 3000, replace=False))
    r = kneighbors(X, 7, query_index=qi)
    assert r.stats["method"] == "tree" and torch.equal(r.query_index, qi)
    same(r, kneighbors(X, 7, query_index=qi, method="brute"))
    check(r, *brute(X.numpy(), 7, query_index=qi.numpy()))


def test_ties_and_duplicates_the_candidates_cannot_certify_go_to_the_brute_force():
    """An integer lattice (every distance tied many times over) with some points repeated more often than the tree's
    candidate list is long: the rows whose k-th distance meets the tree's last listed one are searched again by the
    brute force, and the answer is the brute force's, ties decided by the smaller index."""
    g = np.stack(np.meshgrid(*(np.arange(21),) * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    rng = np.random.default_rng(3)
    X = np.concatenate([g, np.repeat(g[:5], 20, axis=0)])  # five points 21 times each
    X = torch.from_numpy(X[rng.permutation(len(X))])
    r = kneighbors(X, 8)
    assert r.stats["method"] == "tree" and r.stats["tree"]["recomputed_rows"] > 0
    same(r, kneighbors(X, 8, method="brute"))
    check_some(r, X, 8)


def test_data_of_higher_intrinsic_dimension_keeps_the_brute_force():
    """A 20-dimensional cube: the sample's estimated dimension is past the gate, no tree is built."""
    X = torch.from_numpy(np.random.default_rng(4).random((N, 20)))
    r = kneighbors(X, 10)
    assert r.stats["method"] == "brute" and not r.stats["tree"]["used"]
    assert r.stats["tree"]["sample_dimension"] > tree._TREE_MAX_ID and "build_s" not in r.stats["tree"]
    check_some(r, X, 10)


def test_the_gate_decides_nothing_about_small_or_wide_inputs_or_forced_methods():
    X = torch.from_numpy(np.random.default_rng(5).random((4000, 3)))
    assert "tree" not in kneighbors(X, 5).stats  # too few rows: the brute force takes no time
    Y = torch.from_numpy(np.random.default_rng(5).random((N, 3)))
    assert "tree" not in kneighbors(Y, 5, method="brute").stats
    assert "tree" not in kneighbors(Y, 5, queries=Y[:10]).stats  # a separate query set: the engine's search
    assert not tree.eligible(N, 3, torch.device("cuda"), "auto", 48)
    assert not tree.eligible(N, 48, torch.device("cpu"), "auto", 48)


def test_a_tree_that_would_not_win_clearly_is_not_used(monkeypatch):
    """The measured choice: with the bar at zero the tree never wins, and the answer is the brute force's."""
    monkeypatch.setattr(tree, "_TREE_WIN", 0.0)
    X = torch.from_numpy(np.random.default_rng(6).random((N, 2)))
    r = kneighbors(X, 6)
    assert r.stats["method"] == "brute" and r.stats["tree"]["used"] is False
    check_some(r, X, 6)


def test_mle_on_low_dimensional_float64_data_equals_skdim():
    skdim = pytest.importorskip("skdim")
    rng = np.random.default_rng(7)
    t = rng.uniform(0, 4 * np.pi, N)
    X = np.stack([t * np.cos(t), 10 * rng.random(N), t * np.sin(t)], 1) + 1e-3 * rng.normal(size=(N, 3))
    ours = mle_id(torch.from_numpy(X), k=20).value
    theirs = float(skdim.id.MLE().fit(X).dimension_)
    assert ours == pytest.approx(theirs, rel=1e-9)
