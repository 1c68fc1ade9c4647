"""The exact kNN engine (estimators/knn/engine.py; docs/methods.md §0, §1.1, §7).

Every answer is compared with an independent float64 numpy brute force (difference-based distances, rows sorted
with a stable sort so that ties go to the smaller index) or with scikit-learn. The pruned code paths are
exercised on small inputs by lowering the engine's size thresholds (``small_thresholds``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

import estimators._native as native
import estimators.knn.engine as knn
from estimators.base import EstimatorError
from estimators.knn import Duplicates, KNNResult, exact_duplicates, kneighbors


def brute(ref: np.ndarray, k: int, queries: np.ndarray | None = None, query_index=None):
    """float64 reference: sqrt(sum((q - x)**2)), self excluded by index, stable sort (ties: smaller index)."""
    ref64 = np.asarray(ref, dtype=np.float64)
    if queries is None:
        qi = np.arange(len(ref)) if query_index is None else np.asarray(query_index)
        q64 = ref64[qi]
    else:
        qi = None
        q64 = np.asarray(queries, dtype=np.float64)
    out_d, out_i = [], []
    step = max(1, 2_000_000 // ref64.size)
    for s in range(0, len(q64), step):
        diff = q64[s : s + step, None, :] - ref64[None, :, :]
        d = np.sqrt((diff * diff).sum(-1))
        if qi is not None:
            d[np.arange(d.shape[0]), qi[s : s + step]] = np.inf
        o = np.argsort(d, axis=1, kind="stable")[:, :k]
        out_i.append(o)
        out_d.append(np.take_along_axis(d, o, 1))
    return np.concatenate(out_d), np.concatenate(out_i)


@pytest.fixture
def small_thresholds(monkeypatch):
    """Let the pruned paths run on small test inputs (same code, smaller size gates)."""
    monkeypatch.setattr(knn, "_PRUNE_MIN_PAIRS", 0)
    monkeypatch.setattr(knn, "_PRUNE_MIN_REF", 200)
    monkeypatch.setattr(knn, "_PRUNE_MIN_DIM", 8)
    monkeypatch.setattr(knn, "_CLUSTER_SIZE", 32)
    monkeypatch.setattr(knn, "_HOME_NEED", 96)
    monkeypatch.setattr(knn, "_FALLBACK_AFTER", 256)
    # many exact phases, each merged in several row chunks
    monkeypatch.setattr(knn, "_FLUSH_PAIRS", 2000)
    monkeypatch.setattr(knn, "_MERGE_ENTRIES", 300)


def check(res: KNNResult, ref_d: np.ndarray, ref_i: np.ndarray) -> None:
    assert res.distances.dtype == torch.float64 and res.indices.dtype == torch.int64
    np.testing.assert_array_equal(res.indices.numpy(), ref_i)
    np.testing.assert_allclose(res.distances.numpy(), ref_d, rtol=1e-13, atol=0)


def clustered(n: int, D: int, intrinsic: int, seed: int) -> np.ndarray:
    """Points near a few random `intrinsic`-dim affine pieces in R^D (where the PCA pruning works)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (8, D))
    bases = rng.normal(0, 1, (8, intrinsic, D))
    lab = rng.integers(0, 8, n)
    lat = rng.normal(0, 1, (n, intrinsic))
    return centers[lab] + np.einsum("ni,nid->nd", lat, bases[lab]) + 1e-3 * rng.normal(size=(n, D))


# --------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(
    "n,D,k",
    [pytest.param(300, 5, 7, id="low-D"), pytest.param(400, 50, 20, id="mid-D"), pytest.param(50, 3, 49, id="k=n-1")],
)
def test_brute_path_matches_float64_reference(n, D, k):
    X = torch.randn(n, D, generator=torch.Generator().manual_seed(n + D), dtype=torch.float64)
    res = kneighbors(X, k)
    assert res.stats["method"] == "brute"
    check(res, *brute(X.numpy(), k))
    np.testing.assert_array_equal(res.query_index.numpy(), np.arange(n))


@pytest.fixture(params=["native", "torch"])
def exact_kernel(request, monkeypatch):
    """Run a test with the fused native pair-distance kernel and again with the torch fallback."""
    if request.param == "torch":
        monkeypatch.setattr(native, "_lib", None)
    elif not native.available():
        pytest.fail(
            "the native kernel was not built: `pip install -e .` compiles estimators/_native/exact.c "
            "(needs a C compiler; README 'Set-up')"
        )
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 2, 20])
def test_symmetric_pruned_path_exact_on_clustered_data(small_thresholds, exact_kernel, dtype, k):
    X = torch.from_numpy(clustered(1500, 64, 6, seed=k)).to(dtype)
    res = kneighbors(X, k, method="pruned")
    assert res.stats["method"] == "pruned-symmetric"
    assert res.stats["pruned_fraction"] > 0.3  # the pruning actually pruned on this data
    assert res.stats["centered_copy"] == (dtype == torch.float64)  # float32 input is used in place
    assert res.stats["exact_kernel"] == exact_kernel
    check(res, *brute(X.numpy(), k))


def test_matches_sklearn_nearest_neighbors(small_thresholds):
    X = clustered(1200, 40, 5, seed=11)
    res = kneighbors(torch.from_numpy(X), 10)
    # low intrinsic dimension: the gate's sample lets the pruning run, and it prunes
    assert min(res.stats["pilot_kept"].values()) < knn._PILOT_BRUTE and res.stats["blocks_pruned"] > 0
    # the gate's first stage (columns within reach by their distance itself) bounds what every rank keeps from below
    assert res.stats["pilot_within_reach"] <= min(res.stats["pilot_kept"].values())
    d, i = NearestNeighbors(n_neighbors=11, algorithm="brute").fit(X).kneighbors(X)
    # sklearn includes the point itself first (no duplicates here) and uses |a|²+|b|²-2ab in float64
    np.testing.assert_array_equal(res.indices.numpy(), i[:, 1:])
    np.testing.assert_allclose(res.distances.numpy(), d[:, 1:], rtol=1e-6)


def test_anchors_query_index(small_thresholds):
    X = torch.from_numpy(clustered(1500, 48, 5, seed=3))
    qi = torch.from_numpy(np.random.default_rng(0).choice(1500, 400, replace=False))
    res = kneighbors(X, 15, query_index=qi)
    assert res.stats["method"] == "pruned"
    np.testing.assert_array_equal(res.query_index.numpy(), qi.numpy())
    check(res, *brute(X.numpy(), 15, query_index=qi.numpy()))
    # the same anchors through the brute path
    check(
        kneighbors(X[:700], 15, query_index=qi[qi < 700]), *brute(X[:700].numpy(), 15, query_index=qi[qi < 700].numpy())
    )


def test_separate_queries_no_self_exclusion(small_thresholds):
    X = torch.from_numpy(clustered(1500, 48, 5, seed=4))
    Q = torch.cat([X[:50], torch.from_numpy(clustered(250, 48, 5, seed=5))])  # 50 queries equal reference rows
    res = kneighbors(X, 5, queries=Q)
    assert res.query_index is None
    check(res, *brute(X.numpy(), 5, queries=Q.numpy()))
    assert torch.all(res.distances[:50, 0] == 0) and torch.equal(res.indices[:50, 0], torch.arange(50))
    Qs = Q[:40]
    check(kneighbors(X[:500], 5, queries=Qs), *brute(X[:500].numpy(), 5, queries=Qs.numpy()))


def test_isotropic_high_dimensional_data_falls_back_and_stays_exact(small_thresholds):
    X = torch.randn(1200, 256, generator=torch.Generator().manual_seed(7))
    res = kneighbors(X, 10)
    # the projection cannot prune: the gate's sample says so from the distances themselves (a lower bound of what
    # any rank keeps), so no principal direction is found, and every block runs by brute force
    assert res.stats["pilot_within_reach"] > knn._PILOT_BRUTE
    assert "pilot_kept" not in res.stats and "pca" not in res.stats["seconds"]
    assert res.stats["chosen"] == "brute" and res.stats["blocks_pruned"] == 0 and "rank" not in res.stats
    check(res, *brute(X.numpy(), 10))
    qi = torch.arange(0, 1200, 2)
    res = kneighbors(X, 10, query_index=qi)
    assert "fallback_after" in res.stats
    check(res, *brute(X.numpy(), 10, query_index=qi.numpy()))


# --------------------------------------------------------------------------------------------- duplicates, ties


@pytest.mark.parametrize("pruned", [False, True])
def test_exact_duplicates_give_zero_distances_in_index_order(monkeypatch, exact_kernel, pruned):
    if pruned:
        for name, v in (
            ("_PRUNE_MIN_PAIRS", 0),
            ("_PRUNE_MIN_REF", 200),
            ("_PRUNE_MIN_DIM", 8),
            ("_CLUSTER_SIZE", 32),
            ("_HOME_NEED", 96),
        ):
            monkeypatch.setattr(knn, name, v)
    base = clustered(600, 32, 4, seed=8)
    X = np.concatenate([base, base[:100], base[:100], base[300:310]])  # triplicates and duplicates
    X = X[np.random.default_rng(1).permutation(len(X))]
    res = kneighbors(torch.from_numpy(X), 6)
    check(res, *brute(X, 6))
    d = res.distances.numpy()
    assert np.isfinite(d).all() and (d >= 0).all() and (d[:, 0] == 0).sum() >= 200


@pytest.mark.parametrize("pruned", [False, True])
def test_lattice_ties_broken_by_smaller_index(monkeypatch, exact_kernel, pruned):
    if pruned:
        for name, v in (
            ("_PRUNE_MIN_PAIRS", 0),
            ("_PRUNE_MIN_REF", 200),
            ("_PRUNE_MIN_DIM", 2),
            ("_CLUSTER_SIZE", 32),
            ("_HOME_NEED", 96),
        ):
            monkeypatch.setattr(knn, name, v)
    g = np.stack(np.meshgrid(np.arange(8), np.arange(8), np.arange(8), indexing="ij"), -1).reshape(-1, 3)
    X = g[np.random.default_rng(2).permutation(len(g))].astype(np.float32)  # 512 points, massive ties
    res = kneighbors(torch.from_numpy(X), 12)
    ref_d, ref_i = brute(X, 12)
    check(res, ref_d, ref_i)
    # interior points have 6 neighbours at distance 1, 12 at sqrt(2): ties decided by index
    assert (ref_d[:, :6] == 1).all(axis=1).sum() > 100


def test_float32_near_duplicates_where_the_gemm_shortcut_fails():
    rng = np.random.default_rng(9)
    base = (1000.0 + rng.normal(0, 1, (1, 16))).astype(np.float32)
    X = (base + rng.integers(-4, 5, (300, 16)).astype(np.float32) * np.float32(1 / 1024)).astype(np.float32)
    X = np.unique(X, axis=0)
    res = kneighbors(torch.from_numpy(X), 5)
    assert res.stats["centered_copy"]  # far from the origin: the engine centres a copy
    ref_d, ref_i = brute(X, 5)
    check(res, ref_d, ref_i)
    # the test is meaningful: the float32 |a|²+|b|²-2ab shortcut gets these neighbours wrong
    Xt = torch.from_numpy(X)
    n2 = (Xt * Xt).sum(1)
    sc = (n2[:, None] + n2[None, :] - 2 * Xt @ Xt.T).clamp_min(0)
    sc.fill_diagonal_(float("inf"))
    naive = torch.argsort(sc, dim=1, stable=True)[:, :5].numpy()
    assert (naive != ref_i).mean() > 0.2


def test_small_memory_budget_gives_identical_results(small_thresholds):
    X = torch.from_numpy(clustered(1300, 48, 5, seed=12)).float()
    a = kneighbors(X, 9)
    b = kneighbors(X, 9, memory_budget_mb=1)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.distances, b.distances)
    qi = torch.arange(0, 1300, 3)
    a = kneighbors(X, 9, query_index=qi)
    b = kneighbors(X, 9, query_index=qi, memory_budget_mb=1)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.distances, b.distances)


def test_frequent_exact_phases_merge_to_the_same_answer(small_thresholds, exact_kernel, monkeypatch):
    X = torch.from_numpy(clustered(1300, 48, 5, seed=18)).float()
    a = kneighbors(X, 9)
    monkeypatch.setattr(knn, "_FLUSH_PAIRS", 500)  # many partial exact phases, merged row by row
    b = kneighbors(X, 9)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.distances, b.distances)


@pytest.mark.parametrize("mode", ["symmetric", "anchors"])
def test_no_candidate_pair_is_queued_twice_between_exact_phases(small_thresholds, monkeypatch, mode):
    # the exact phase relies on it (a repeated pair would count twice towards a row's k-th certified value)
    X = torch.from_numpy(clustered(1200, 40, 5, seed=21)).float()
    seen, repeats, queued = set(), [], []
    add, flush = knn._Engine.add, knn._Engine.flush

    def spy_add(self, rows, cols, sq):
        for pair in zip(rows.tolist(), cols.tolist()):
            if pair in seen:
                repeats.append(pair)
            seen.add(pair)
            queued.append(pair)
        add(self, rows, cols, sq)

    def spy_flush(self, *args):
        seen.clear()
        flush(self, *args)

    monkeypatch.setattr(knn._Engine, "add", spy_add)
    monkeypatch.setattr(knn._Engine, "flush", spy_flush)
    monkeypatch.setattr(knn, "_EXACT_IN_BLOCK", False)  # the symmetric search's pending-pair path
    qi = None if mode == "symmetric" else torch.arange(0, 1200, 3)
    res = kneighbors(X, 10, query_index=qi)
    assert len(queued) >= res.indices.numel() and repeats == []
    check(res, *brute(X.numpy(), 10, query_index=qi))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["auto", "brute"])
def test_symmetric_search_fused_scan_offers_each_directed_pair_once(small_thresholds, dtype, method):
    """With the native kernel, each block's products go through the fused top-k scan: every directed pair (row,
    partner) is tested at most once (by brute force: exactly once), nothing goes through the engine's pending-pair
    phase, the lists end with about k candidates per row, and the answer is the float64 brute force's."""
    if not native.available():
        pytest.fail("the native kernel was not built (README 'Set-up')")
    X = torch.from_numpy(clustered(1500, 48, 5, seed=23)).to(dtype)
    n = X.shape[0]
    tested = []
    run = native.BlockScan.run

    def spy(self, dot, nb, rn2, cn2, rpos, cpos, *rest):
        r, c = rpos.long().unsqueeze(1), cpos.long().unsqueeze(0)
        fwd = (r * n + c)[r != c]  # row rpos[i] tests partner cpos[j]
        back = (c * n + r)[:, nb:][(r != c)[:, nb:]]  # and, outside the block, partner rpos[i] for row cpos[j]
        tested.extend([fwd, back])
        return run(self, dot, nb, rn2, cn2, rpos, cpos, *rest)

    knn_add = knn._Engine.add
    pending = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native.BlockScan, "run", spy)
        mp.setattr(knn._Engine, "add", lambda self, *a: (pending.append(a), knn_add(self, *a)))
        res = kneighbors(X, 12, method=method)
    assert res.stats["exact_in_block"] and res.stats["method"] == "pruned-symmetric"
    keys = torch.cat(tested)
    assert keys.numel() == torch.unique(keys).numel()  # no directed pair twice
    if method == "brute":
        assert keys.numel() == n * (n - 1)  # every one once
    assert pending == []  # no pair waited for the pending-pair exact phase
    assert res.stats["candidates_mean"] < 2 * 12  # close to k per row measured exactly
    check(res, *brute(X.numpy(), 12))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["brute", "mixed"])
def test_symmetric_blocks_by_brute_force_or_mixed_give_the_exact_answer(
    small_thresholds, monkeypatch, dtype, threads, mode
):
    """Blocks run by brute force, or alternately pruned and brute force (as the cost-based choice may do), in one
    or two worker threads: the same exact answer as a float64 brute force."""
    X = torch.from_numpy(clustered(1400, 48, 5, seed=31)).to(dtype)
    if mode == "mixed":
        nxt = knn._Chooser.__next__

        def alternate(self):
            self.mode = "brute" if self.pos % 2 else "pruned"
            return nxt(self)

        monkeypatch.setattr(knn._Chooser, "__next__", alternate)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        res = kneighbors(X, 11, method="brute" if mode == "brute" else "pruned")
    finally:
        torch.set_num_threads(saved)
    assert torch.get_num_threads() == saved
    assert res.stats["threads"] == threads
    if mode == "brute":
        assert res.stats["blocks_pruned"] == 0 and res.stats["pruned_fraction"] == 0.0
    else:
        assert res.stats["blocks_pruned"] > 0 and res.stats["blocks_brute"] > 0
    check(res, *brute(X.numpy(), 11))


def test_chooser_switches_on_a_lasting_cost_difference_not_on_one_slow_block():
    """The running choice between pruned and brute-force blocks: blocks whose GEMM rate prices their brute force at
    10 ms, each pruned one taking 2 ms; one pruned block slowed to 1 s (another process on the core) leaves the
    blocks pruned, while pruned blocks that keep costing 20 ms turn the choice to brute force (after at least
    ``_SWITCH_STREAK`` of them), and probes that cost 2 ms again turn it back."""
    n = 100_000
    units = [(c, s, s + 10) for c, s in enumerate(range(0, n, 10))]

    def feed(ch, t_total, until=None, most=1):
        """Reports ``most`` tasks (or until the mode becomes ``until``); the number of tasks taken."""
        for i in range(most):
            if ch.mode == until:
                return i
            mode, group = next(ch)
            # a pruned block's GEMM: 1 ms for 10 rows x 100 surviving columns, so its brute force of 1000 columns
            # is priced at 10 ms
            ch.report(mode, group, 10, 1000, 100, 0.0, 1e-3, 0.0, t_total if mode == "pruned" else 0.0, 0.0)
        return most

    ch = knn._Chooser(units, n, None)
    feed(ch, 2e-3, most=20)
    feed(ch, 1.0)
    feed(ch, 2e-3, most=40)
    assert ch.mode == "pruned" and ch.switches == []

    ch = knn._Chooser(units, n, None)
    feed(ch, 2e-3, most=20)
    taken = feed(ch, 2e-2, until="brute", most=30)
    assert knn._SWITCH_STREAK <= taken < 30 and len(ch.switches) == 1
    feed(ch, 2e-3, until="pruned", most=300)
    assert ch.mode == "pruned" and len(ch.switches) == 2
    assert ch.counts["brute"] > 0


@pytest.mark.parametrize("t_total, switches", [(13e-3, False), (14e-3, True)])
def test_chooser_prices_the_brute_force_with_its_scan_and_its_column_builds(t_total, switches):
    """A pruned block of 32 rows whose 100 surviving columns (of 1000) took 1 ms of GEMM, 0.2 ms of scan and 0.5 ms
    of building: the same block by brute force costs 10 ms of GEMM, 2 ms of scan (both per entry) and the build of
    its 1000 columns once per brute-force task of ``brute_rows`` rows (32 of 256 rows here: 0.625 ms), 12.625 ms in
    all. Pruned blocks taking 13 ms are within the switching margin of that (they stay pruned; priced by the GEMM
    alone, 10 ms, they would not); blocks taking 14 ms are beyond it."""
    n = 100_000
    units = [(c, s, s + 32) for c, s in enumerate(range(0, n, 32))]
    ch = knn._Chooser(units, n, None)
    assert ch.brute_rows == 256
    for _ in range(3 * knn._SWITCH_STREAK):
        mode, group = next(ch)
        if mode == "brute":
            break
        ch.report(mode, group, 32, 1000, 100, 0.0, 1e-3, 2e-4, t_total, 5e-4)
    assert (ch.switches != []) == switches


def test_three_sort_ordering_fallback_gives_the_same_answer(small_thresholds, monkeypatch):
    X = torch.from_numpy(clustered(900, 24, 4, seed=22)).float()
    monkeypatch.setattr(native, "_lib", None)  # the torch merge, whose ordering this is
    a = kneighbors(X, 7)
    monkeypatch.setattr(knn, "_PACK_LIMIT", 0)
    b = kneighbors(X, 7)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.distances, b.distances)
    check(b, *brute(X.numpy(), 7))


def test_distances_are_symmetric_bitwise(small_thresholds, exact_kernel):
    X = torch.from_numpy(clustered(1000, 32, 4, seed=13))
    res = kneighbors(X, 8)
    d = {}
    for i, (row_i, row_d) in enumerate(zip(res.indices.tolist(), res.distances.tolist())):
        for j, v in zip(row_i, row_d):
            d[(i, j)] = v
    mutual = [(i, j) for (i, j) in d if (j, i) in d]
    assert len(mutual) > 1000
    assert all(d[(i, j)] == d[(j, i)] for i, j in mutual)


def test_lowered_float32_matmul_precision_switches_to_float64():
    X = torch.from_numpy(clustered(400, 24, 3, seed=14)).float()
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        res = kneighbors(X, 5)
    finally:
        torch.set_float32_matmul_precision(old)
    assert res.stats["gemm_dtype"] == "float64"
    check(res, *brute(X.numpy(), 5))


def test_progress_is_reported_per_chunk_and_ends_at_one(small_thresholds):
    # one worker thread: with several, only the calling thread reports (after each task it ran), and how many tasks
    # it runs depends on the scheduler
    seen = []
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kneighbors(
            torch.from_numpy(clustered(1200, 32, 4, seed=15)),
            5,
            memory_budget_mb=1,
            progress=lambda f, stage: seen.append((f, stage)),
        )
    finally:
        torch.set_num_threads(saved)
    fr = [f for f, _ in seen]
    assert len(fr) > 5 and fr == sorted(fr) and fr[-1] == 1.0 and all(s == "knn" for _, s in seen)


@pytest.mark.gpu
def test_cuda_matches_cpu(small_thresholds):
    X = torch.from_numpy(clustered(1500, 64, 6, seed=16)).float()
    a = kneighbors(X, 10)
    b = kneighbors(X, 10, device="cuda")
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.distances, b.distances, rtol=1e-13, atol=0)


# ------------------------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "k,match",
    [(0, "k=0"), (-1, "k=-1"), (10, "only 9 candidate"), (2.0, "positive integer"), (True, "positive integer")],
)
def test_bad_k_is_explained(k, match):
    with pytest.raises(EstimatorError, match=match):
        kneighbors(torch.randn(10, 3), k)


def test_bad_arguments_are_explained():
    X = torch.randn(10, 3)
    with pytest.raises(EstimatorError, match="only 10 candidate"):
        kneighbors(X, 11, queries=torch.randn(2, 3))
    with pytest.raises(EstimatorError, match="not both"):
        kneighbors(X, 2, queries=X, query_index=torch.arange(2))
    with pytest.raises(EstimatorError, match="4 features but reference has 3"):
        kneighbors(X, 2, queries=torch.randn(2, 4))
    with pytest.raises(EstimatorError, match="NaN or Inf"):
        kneighbors(torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]]), 1)
    for bad in (float("nan"), float("inf"), -float("inf")):  # anywhere, also in the last row or in queries
        Y = torch.rand(600, 5, dtype=torch.float64)
        Y[-1, -1] = bad
        with pytest.raises(EstimatorError, match="reference contains NaN or Inf"):
            kneighbors(Y, 3)
        with pytest.raises(EstimatorError, match="queries contains NaN or Inf"):
            kneighbors(X, 2, queries=Y[-3:].float())
    with pytest.raises(EstimatorError, match=r"\[0, 9\]"):
        kneighbors(X, 2, query_index=torch.tensor([0, 10]))
    with pytest.raises(EstimatorError, match="shape"):
        kneighbors(torch.randn(10), 2)


# ------------------------------------------------------------------------------------------------- duplicates


def test_exact_duplicates_matches_numpy_unique():
    rng = np.random.default_rng(17)
    X = rng.integers(0, 3, (3000, 4)).astype(np.float32)  # 81 distinct rows: many hash-equal groups
    d = exact_duplicates(torch.from_numpy(X))
    assert isinstance(d, Duplicates)
    u, first, inv = np.unique(X, axis=0, return_index=True, return_inverse=True)
    assert sorted(d.unique_index.tolist()) == sorted(first.tolist()) and d.n_removed == 3000 - len(u)
    np.testing.assert_array_equal(X[d.unique_index][d.inverse], X)
    assert all(np.all(X[g] == X[g[0]]) and g == sorted(g) for g in d.groups)
    assert sum(len(g) for g in d.groups) == sum(c for c in np.bincount(inv.reshape(-1)) if c > 1)


def test_exact_duplicates_signed_zero_and_integers():
    d = exact_duplicates(np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0 + 1e-16], [1e-300, 1.0]]))
    assert d.groups == [[0, 1, 2]] and d.unique_index.tolist() == [0, 3]  # 1 + 1e-16 == 1 in float64
    d = exact_duplicates(torch.tensor([[1, 2, 3], [1, 2, 3], [3, 2, 1]], dtype=torch.int8))
    assert d.groups == [[0, 1]] and d.inverse.tolist() == [0, 0, 1]
    assert exact_duplicates(np.zeros((0, 3))).n_removed == 0


# ------------------------------------------------------------------------------------------- shared pieces


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [1, 7, 8, 61, 784])
def test_exact_distances_native_and_torch_match_numpy(exact_kernel, dtype, D):
    """Both implementations of the one exact distance equal numpy's difference-based float64 distance (a few
    ulps apart: they sum in different orders), including D not a multiple of the kernel's 8 lanes."""
    rng = np.random.default_rng(D)
    A = torch.from_numpy(rng.normal(size=(300, D)) * 10 + 3).to(dtype)
    B = torch.from_numpy(rng.normal(size=(200, D))).to(dtype)
    ia = torch.from_numpy(rng.integers(0, 300, 9000))
    ib = torch.from_numpy(rng.integers(0, 200, 9000))
    got = knn.exact_distances(A, ia, B, ib)
    a64, b64 = A.numpy().astype(np.float64), B.numpy().astype(np.float64)
    want = np.sqrt(((b64[ib.numpy()] - a64[ia.numpy()]) ** 2).sum(1))
    assert got.dtype == torch.float64 and got.shape == (9000,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14, atol=0)
    assert knn.exact_distances(A, ia[:0], B, ib[:0]).shape == (0,)


def test_principal_directions_span_a_low_rank_set_and_bound_distances_from_below():
    """The range finder's Rayleigh–Ritz step keeps the *top* directions: on exact rank-5 data (plus an offset) the
    rank-5 embedding's residual coordinate rho is ~0 and embedded distances equal the true ones to float32
    rounding; with rank 8 the bound |w_i - w_j| <= |x_i - x_j| holds (up to the float32 rounding of w), and fewer
    sampled rows than asked directions give as many directions as rows."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, 5)) @ rng.standard_normal((5, 120)) + 7.0
    emb = knn.lower_bound_embedding(torch.from_numpy(X), 5)
    assert emb.rank == 5 and emb.w.shape == (600, 6)
    w = emb.w.double().numpy()
    scale = np.abs(X - X.mean(0)).max()
    assert np.abs(w[:, 5]).max() < 1e-4 * scale  # rho: nothing outside the 5 found directions
    d_true = np.linalg.norm(X[:50, None] - X[None, :50], axis=2)
    d_emb = np.linalg.norm(w[:50, None, :5] - w[None, :50, :5], axis=2)
    assert np.allclose(d_emb, d_true, rtol=0, atol=1e-5 * scale)
    Y = rng.standard_normal((600, 120))  # full rank: the embedding only bounds from below
    e8 = knn.lower_bound_embedding(torch.from_numpy(Y), 8)
    w8 = e8.w.double().numpy()
    lo = np.linalg.norm(w8[:80, None] - w8[None, :80], axis=2)
    hi = np.linalg.norm(Y[:80, None] - Y[None, :80], axis=2)
    assert (lo <= hi + 1e-5 * np.abs(Y).max()).all() and (lo < 0.9 * hi + 1e-9).mean() > 0.5
    few = knn.lower_bound_embedding(torch.from_numpy(Y[:30]), 64)
    assert few.rank == 30


def test_home_clusters_walk_past_the_first_nearest_when_they_are_too_small():
    """Each home set starts with the cluster itself, follows centroid distance, skips empty clusters and stops
    once it holds `need` points; rows whose 64 nearest clusters are too small use the full order."""
    g = torch.Generator().manual_seed(0)
    cent = torch.randn(150, 3, generator=g)
    counts = [0 if c % 5 == 0 else 2 for c in range(150)]
    homes = knn._home_clusters(cent, counts, need=200, batch=64)  # 100 of the 120 clusters of 2 points
    d = torch.cdist(cent.double(), cent.double())
    for c in (1, 77, 149):
        order = [c] + [j for j in torch.argsort(d[c], stable=True).tolist() if j != c]
        assert homes[c] == [j for j in order if counts[j]][:100]
    assert knn._home_clusters(cent, counts, need=10**6)[3] == [
        j for j in [3] + [j for j in torch.argsort(d[3], stable=True).tolist() if j != 3] if counts[j]
    ]  # too few points: all
    small = knn._home_clusters(cent, [3] * 150, need=10)
    for c in range(150):
        want = [c] + [j for j in torch.argsort(d[c], stable=True).tolist() if j != c][:3]
        assert small[c] == want


@pytest.mark.parametrize("ids", [torch.long, torch.int32])
def test_native_topk_merge_equals_a_sort_by_distance_then_index(ids):
    """Random offers with repeated pairs and many equal distances, in random order and in several batches: each
    row ends with its k smallest distinct (distance, index) pairs, as a sort would give (int64 and int32 ids:
    the search keeps int32 best lists while the row count allows)."""
    if not native.available():
        pytest.fail("the native kernel was not built (README 'Set-up')")
    rng = np.random.default_rng(5)
    Q, k, P = 40, 6, 3000
    rows = rng.integers(0, Q, P)
    cols = rng.integers(0, 60, P)
    d = np.round(np.abs(cols - 30) / 7 + rows % 3, 0)  # the same pair always has the same distance; many ties
    out_d = torch.full((Q, k), np.inf, dtype=torch.float64)
    out_i = torch.full((Q, k), -1, dtype=ids)
    for s in range(0, P, 700):
        assert native.topk_merge(
            torch.from_numpy(rows[s : s + 700]),
            torch.from_numpy(cols[s : s + 700]),
            torch.from_numpy(d[s : s + 700]),
            out_d,
            out_i,
        )
    for r in range(Q):
        offered = sorted({(d[p], cols[p]) for p in range(P) if rows[p] == r})[:k]
        want_d = [v for v, _ in offered] + [np.inf] * (k - len(offered))
        want_i = [c for _, c in offered] + [-1] * (k - len(offered))
        assert out_d[r].tolist() == want_d and out_i[r].tolist() == want_i


def test_native_block_scan_matches_a_sequential_reference():
    """One block of the symmetric search through ``tg_block_scan``, against a plain Python reading of its contract:
    entries in row-major order, the certified value s = (|a_i|² + |a_j|²) - 2 dot in float32, self entries skipped,
    column j offered to row i when s <= thr[row], row i to column j when j >= nb and s <= thr[column]; each row
    keeps its K smallest offers (partners too; an offer equal to a full list's last value is not kept), and its
    k-th kept value tightens its threshold (rounded up to float32). The kernel's vectorised screen must not change a
    single kept value, partner or threshold."""
    if not native.available():
        pytest.fail("the native kernel was not built (README 'Set-up')")
    rng = np.random.default_rng(9)
    n, k, K, R, C, E, eta = 60, 3, 5, 9, 37, 1e-3, 1e-9
    rpos = np.arange(10, 10 + R)
    cpos = np.unique(np.concatenate([rpos[:4], rng.choice(np.arange(19, 60), C - 4, replace=False)]))
    C = cpos.size
    nb = int((cpos < 10 + R).sum())  # the block's own rows: a prefix of the ascending columns
    dot = rng.normal(size=(R, C)).astype(np.float32)
    rn2 = (2 + rng.random(R)).astype(np.float32)
    cn2 = (2 + rng.random(C)).astype(np.float32)
    thr0 = (3 + 4 * rng.random(n)).astype(np.float32)
    thr0[::7] = np.inf  # rows with no neighbour yet
    Nrow = 1 + rng.random(n)

    def up(x: float) -> np.float32:
        f = np.float32(x)
        return np.nextafter(f, np.float32(np.inf)) if float(f) < x else f

    kv, ki, thr, offers = np.full((n, K), np.inf, np.float32), np.full((n, K), -1, np.int32), thr0.copy(), 0

    def offer(row: int, v: np.float32, partner: int) -> None:
        if not v < kv[row, -1]:
            return
        pos = int(np.searchsorted(kv[row], v, side="right"))  # after equal values
        kv[row, pos + 1 :], ki[row, pos + 1 :] = kv[row, pos:-1].copy(), ki[row, pos:-1].copy()
        kv[row, pos], ki[row, pos] = v, partner
        if np.isfinite(kv[row, k - 1]):
            N = Nrow[row]
            U = np.sqrt(max(float(kv[row, k - 1]), 0.0) + E * N * N) + eta * N
            thr[row] = min(thr[row], up((U + eta * N) ** 2 + E * N * N))

    for i in range(R):
        for j in range(C):
            if rpos[i] == cpos[j]:
                continue
            s = (rn2[i] + cn2[j]) - np.float32(2) * dot[i, j]
            if s <= thr[rpos[i]]:
                offers += 1
                offer(rpos[i], s, cpos[j])
            if j >= nb and s <= thr[cpos[j]]:
                offers += 1
                offer(cpos[j], s, rpos[i])
    kv_t = torch.full((n, K), np.inf, dtype=torch.float32)
    ki_t = torch.full((n, K), -1, dtype=torch.int32)
    thr_t = torch.from_numpy(thr0.copy())
    got = native.BlockScan().run(
        torch.from_numpy(dot),
        nb,
        torch.from_numpy(rn2),
        torch.from_numpy(cn2),
        torch.from_numpy(rpos),
        torch.from_numpy(cpos),
        kv_t,
        ki_t,
        k,
        thr_t,
        torch.from_numpy(Nrow),
        E,
        eta,
    )
    assert got == offers and offers > 2 * C
    np.testing.assert_array_equal(kv_t.numpy(), kv)
    np.testing.assert_array_equal(ki_t.numpy(), ki)
    np.testing.assert_array_equal(thr_t.numpy(), thr)
    assert (thr < thr0).sum() > 10 and (ki >= 0).all(axis=1).sum() > 10  # thresholds tightened, lists filled


@pytest.mark.parametrize("method", ["auto", "brute"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_symmetric_search_rows_beyond_their_lists_are_recomputed(small_thresholds, monkeypatch, dtype, method):
    """Rows whose candidates may not all fit their lists (no slot beyond k: every row; one slot: some) are
    recomputed against every column at the end: the same exact answer as with the default lists, and as a float64
    brute force (pruned blocks build the rows of their permuted frame on the fly; so do brute-force blocks on
    float64 input, while float32 input is its own frame)."""
    X = torch.from_numpy(clustered(1300, 40, 5, seed=41)).to(dtype)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker, one list per row: with k slots, its last value is the row's k-th
    try:
        a = kneighbors(X, 8, method=method)
        assert a.stats["fallback_rows"] < 13  # the default slots hold almost every row's candidates
        assert a.stats["frame_on_the_fly"] == (method == "auto" or dtype == torch.float64)
        monkeypatch.setattr(knn, "_KEEP", 0)
        b = kneighbors(X, 8, method=method)
        assert b.stats["fallback_rows"] == 1300
        monkeypatch.setattr(knn, "_KEEP", 1)
        c = kneighbors(X, 8, method=method)
        assert 0 < c.stats["fallback_rows"] < 1300
    finally:
        torch.set_num_threads(saved)
    for r in (b, c):
        assert torch.equal(a.indices, r.indices) and torch.equal(a.distances, r.distances)
    check(c, *brute(X.numpy(), 8))


def test_native_projected_test_keeps_the_columns_a_plain_comparison_keeps():
    """``tg_proj_keep`` (one piece of the symmetric search's projected test) against numpy: column j is kept when
    ``G[j, i] <= thr_r[i]`` or ``G[j, i] <= thr_c[j]`` for some i, written as ``base + j`` in ascending order. Equal
    values (the comparison is inclusive), infinite thresholds, NaN entries (pass no test) and widths that are not a
    multiple of the vector length are in the data."""
    if not native.available():
        pytest.fail("the native kernel was not built (README 'Set-up')")
    rng = np.random.default_rng(13)
    for C, R in ((1, 1), (37, 5), (300, 64), (129, 71)):
        G = rng.integers(0, 40 * R, (C, R)).astype(np.float32)  # integers: ties with the thresholds
        G[rng.random((C, R)) < 0.05] = np.nan
        thr_r = rng.integers(0, 8, R).astype(np.float32)
        thr_c = rng.integers(0, 8, C).astype(np.float32)
        thr_c[::11] = np.inf
        want = np.nonzero(((G <= thr_r[None, :]) | (G <= thr_c[:, None])).any(1))[0] + 1000
        out = torch.full((C + 3,), -7, dtype=torch.int64)
        got = native.proj_keep(torch.from_numpy(G), torch.from_numpy(thr_r), torch.from_numpy(thr_c), 1000, out)
        assert got == want.size and 0 < got < C or C == 1
        np.testing.assert_array_equal(out[:got].numpy(), want)
        assert (out[got:] == -7).all()  # nothing written beyond the kept columns
    assert native.proj_keep(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(2), torch.zeros(3), 0, out) is None


def test_prepared_directions_are_the_same_with_one_or_two_threads():
    """The principal directions and the embedding of the symmetric search are computed in pieces spread over the
    threads (``_in_threads``) and combined in the pieces' order: bit for bit the same numbers with one or two
    threads, and the same as a single pass over the whole (to float32 rounding: a sum in another order)."""
    X = torch.from_numpy(clustered(3000, 60, 6, seed=3))
    got = []
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the symmetric search: one intra-op thread per thread
    try:
        for threads in (1, 2):
            eng = knn._Engine(X, 5, torch.device("cpu"), 1 << 30, {}, frame=False)
            eng.threads = threads
            eng.chunk = 256  # several pieces per pass
            pre = knn._Prefixes(eng, (8, 16))
            pre.project()
            got.append((pre.P, pre.zz, pre.a2, pre.z2))
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(*got, strict=True):
        assert torch.equal(a, b)
    P, zz, a2, z2 = got[0]
    A = X - X.mean(0)
    np.testing.assert_allclose(zz.numpy(), (A @ P).float().numpy(), rtol=0, atol=1e-5 * float(A.abs().max()))
    np.testing.assert_allclose(a2.numpy(), (A * A).sum(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(z2[:, 1].numpy(), ((A @ P)[:, :16] ** 2).sum(1).numpy(), rtol=1e-6)
    assert float((P.T @ P - torch.eye(16, dtype=torch.float64)).abs().max()) < 1e-12
