"""The one exact k-nearest-neighbour engine (docs/methods.md §0, §1.1, §7).

Every kNN step of taskgauge goes through :func:`kneighbors`. The answer is the **exact float64** kNN: the
neighbours and distances a float64 brute force computing ``d(i, j) = sqrt(sum((x_i - x_j)**2))`` (difference
based, never the ``|a|² + |b|² - 2a·b`` shortcut, docs/methods.md §0) would return, with ties broken by the smaller
reference index (as a stable sort of each row would). The speed comes from float32 GEMMs whose rounding errors
are bounded a priori, so that nothing the float32 pass discards can belong to the answer.

Algorithm (docs/methods.md §7)
----------------------
Notation: ``a_i`` = row i in the *GEMM frame*: the float32 input itself (no copy) or, for float64 input or data
far from the origin, a centred float32 copy ``x_i - mu`` (distances are translation invariant);
``N_ij = |a_i| + |a_j|``, ``u`` the unit roundoff of the GEMM dtype (2^-24 for IEEE float32),
``gamma_n = n·u / (1 - n·u)``.

1. **Certified float32 distances.** ``s_ij = fl(|a_i|² + |a_j|² - 2 a_i·a_j)`` computed with one float32 GEMM
   satisfies ``|s_ij - |x_i - x_j|²| <= E · N_ij²`` with ``E = 2·(gamma_{D+8} + 16·2^-53)`` (standard dot-product
   error bound, Higham Thm 3.4, plus the roundings of the inputs and of the two additions; the factor 2 is
   slack), and the float64 distance ``d_ij`` is within ``eta·N_ij`` of ``|x_i - x_j|`` (``eta = 2·gamma64_{D+4}``).
   Hence ``lo_ij <= d_ij <= hi_ij`` with ``hi = sqrt(s + E·N²) + eta·N`` and ``lo = sqrt(max(s - E·N², 0)) - eta·N``.
   For query i, ``U_i`` = the k-th smallest ``hi_ij`` is an upper bound of its k-th neighbour distance, and every
   j with ``lo_ij <= U_i`` is a *candidate*. Every true neighbour (ties included) is a candidate; candidates get
   their distance recomputed in float64 as ``|x_i - x_j|`` and the k best are kept, sorted by (distance, index).
   Because ``hi``/``lo`` are monotone in ``s`` and ``N_ij <= |a_i| + max_j |a_j|``, this is a per-row threshold
   on ``s``, applied with ``topk``.
2. **Exact pruning** (large inputs). ``P`` = top ``r`` principal directions (randomised range finder on a
   sample, re-orthonormalised in float64; any orthonormal ``P`` is valid, PCA only makes it effective), so
   ``|P(x_i - x_j)| <= |x_i - x_j|`` up to the measured ``|P Pᵀ - I|``; the residual norm
   ``rho_i = sqrt(|x_i - mu|² - |P(x_i - mu)|²)`` joins as one more coordinate, since
   ``|x_i - x_j|² >= |P(x_i - x_j)|² + (rho_i - rho_j)²``. Points are grouped by k-means in the
   ``r``-dim space. ``U_i`` comes from the certified distances to the query's nearest clusters; the
   projected squared distances (an ``r``-dim GEMM, error bounded as in 1.) give a lower bound on ``d_ij``;
   only columns whose lower bound is ``<= U_i`` for some query of the block survive, and step 1 runs on those
   columns only (a dense GEMM on the gathered survivors). Full self-queries visit each unordered pair once
   (:func:`_pruned_symmetric`: block [s, e) against columns [s, n), a column kept when it may be a neighbour
   of a block row *or* a block row may be one of its neighbours, candidates emitted in both directions);
   anchors and separate queries use :func:`_pruned`. The pruning is exact, never heuristic; when it does not
   pay (isotropic high-dimensional data) the engine notices and falls back to the brute force of step 1.
   In the symmetric search (CPU, native kernel): a gate first (:class:`_Pilot`: pseudo-blocks on a sample estimate
   the fraction of a block's columns the projected test would keep, first from the distances themselves, which
   bound it from below at every rank, and only then, when needed, at each rank; above ``_PILOT_BRUTE`` every block
   runs by brute force, :func:`_symmetric_brute`, with nothing built for the pruning and, for float64 input, the centred
   float32 frame converted a piece at a time instead of copied); whole blocks go to worker threads
   (``torch.get_num_threads()`` of them, each running torch with one intra-op thread: no barrier per small piece,
   so a process competing for a core slows one worker instead of every step); each block runs pruned or by brute
   force (the GEMM on all its columns), whichever the costs measured on the blocks already done say is cheaper
   (:class:`_Chooser`, with a margin that must hold on several consecutive blocks); the projection rank is chosen
   among 16/32/64/128 from the columns the projected test keeps on sample blocks, counted and priced in
   multiply-adds (``_PROJ_ENTRY``: the choice depends on the data, not on the machine's load); the projected test of
   a block is a GEMM per piece of columns and one pass of ``tg_proj_keep`` (the kept columns written directly), its
   thresholds derived from the scan's current ones (tightened by the blocks done so far, so later blocks keep fewer
   columns); the passes of the preparation (principal directions, projection, rank choice) are split into pieces
   spread over the same threads (:func:`_in_threads`, combined in order: the same numbers with any thread count);
   each block's GEMM products go through a fused top-k scan (``tg_block_scan``):
   certified values, both directions' threshold tests, and each row's k + ``_KEEP`` smallest offers kept with
   their partners, its threshold tightening as they improve. At the end those lists give each row's final
   threshold and its candidates (about k), whose float64 distances are computed (:meth:`_Workers._finish`).
3. **Exact phase** (anchors, separate queries, and the symmetric search without the native kernel). Pending
   candidate pairs (each queued once) are tightened (a row's k-th smallest certified value gives a new ``U``),
   recomputed in float64 once per unordered pair, merged with the row's best so far and cut to k by (distance,
   index). On the CPU the float64 distances come from a fused native kernel (:mod:`estimators._native`, built at
   install; torch otherwise, ``stats["exact_kernel"]`` says which).
   Memory: the symmetric search (native kernel) keeps no copy of the data, pruned or not: each worker builds the
   rows of the GEMM frame that a block needs from the reference (in cluster order through the permutation, the
   centred float32 rows of float64 input in one pass, ``tg_frame_rows``); anchors and separate queries use a centred
   float32 copy of float64 input. The working set is bounded by ``memory_budget_mb`` and by the pending-pair limit,
   and freed heap pages go back to the OS at the end of a call.

Float32 GEMMs are only used when torch runs them in IEEE float32; if ``torch.set_float32_matmul_precision``
lowered the precision (TF32/bf16), the engine computes in float64 instead (same answer, slower).

Everything but the optional CPU kernel is device-agnostic torch: the same code runs on CUDA tensors. Results come
back on the CPU.

Shared pieces: :func:`lower_bound_embedding` (step 2's embedding with its certified error constants) and
:func:`exact_distances` (the one float64 distance) also serve the exact inter-class pair search behind
``label_sharpness`` and the δ of ``inductive_bias`` (``estimators.knn.pairs``), so every exact distance and every
pruning bound in taskgauge comes from this module.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from estimators import _native
from estimators.base import EstimatorError, ProgressFn, no_progress
from estimators.knn import known as _known
from estimators.knn import tree as _tree
from estimators.knn.memory import release_freed_memory
from estimators.validation import as_matrix

_U64 = 2.0**-53
_U32 = 2.0**-24

#: below this many (query × reference) pairs, or dimension, the brute force of step 1 is used directly
_PRUNE_MIN_PAIRS = 2**25
_PRUNE_MIN_DIM = 48
_PRUNE_MIN_REF = 4096
#: reference points per k-means cluster (pruning granularity)
_CLUSTER_SIZE = 64
#: extra columns asked from ``topk`` beyond k before the candidate threshold is checked
_TOPK_MARGIN = 8
#: the gate of the symmetric search (:class:`_Pilot`): pseudo-blocks, sample columns, the looseness assumed of the
#: first bounds U, and the estimated fraction of a block's columns kept by the projected test (at the best rank)
#: above which the pruning cannot pay and every block runs by brute force (pruned blocks that keep about half their
#: columns cost about as much as brute-force ones, bench/RESULTS.md)
_PILOT_BLOCKS = 8
_PILOT_COLS = 2048
_PILOT_SLACK = 1.15
_PILOT_BRUTE = 0.4
#: most principal directions used for the projected lower bounds (anchors, separate queries)
_RANK_MAX = 64
#: the symmetric search's candidate projection ranks (capped at D), one chosen by measurement on sample blocks
_RANKS = (16, 32, 64, 128)
_RANK_SAMPLES = 4
#: the rank whose embedding k-means groups (the grouping only affects the speed), and the rows per cluster of the
#: sample its iterations run on (the symmetric search)
_KMEANS_RANK = 32
_KMEANS_SAMPLE = 24
#: most reference columns per certified-distance GEMM (bounds the gathered block)
_COLS_MAX = 512
#: columns per piece of the projected test (its block of products stays cache-sized)
_PROJ_COLS = 4096
#: CPU: most products per piece of the projected test (1 MB of float32; large blocks take narrower pieces)
_PROJ_PIECE = 1 << 18
#: most query rows per block of the pruned search
_ROWS_MAX = 1024
#: working bytes of one row block of the brute force (the budget still caps it)
_BRUTE_BLOCK_BYTES = 8 << 20
#: pending candidate pairs that trigger an exact phase (bounds the engine's working memory)
_FLUSH_PAIRS = 1 << 16
#: reference points whose exact distances give each query's first upper bound U
_HOME_NEED = 384
#: the pruning gives way to the brute force once this many queries are done and this fraction of pairs survived
_FALLBACK_AFTER = 2048
_FALLBACK_SURVIVORS = 0.6
#: rows of one brute-force task of the symmetric search (small consecutive clusters taken together)
_BRUTE_ROWS = 256
#: while the brute force is chosen, every this-many-th task still runs pruned (keeps the comparison current)
_PROBE_EVERY = 16
#: weight kept by the past at each block in the running cost comparison of pruned and brute-force blocks
_DECAY = 0.9
#: the comparison changes the form only when one form's cost exceeds the other's by this factor, in the running sums
#: and in the block itself, on this many consecutive reports (one block slowed by another process, which stays in
#: the running sums for a while, or the first few blocks, cannot flip it)
_SWITCH_MARGIN = 1.1
_SWITCH_STREAK = 4
#: the projection rank's cost model (:func:`_pruned_symmetric`), in multiply-adds: one entry of the projected test
#: costs its r + 3 products plus this much (writing and twice scanning the block of products; measured on the CPU:
#: ~7.3 ns per entry at r = 64, ~11.5 ns at r = 128), one surviving pair its D products of the GEMM
_PROJ_ENTRY = 44
#: ``kneighbors(method=...)``: "auto" chooses per block from measured costs; "pruned"/"brute" force one form (the
#: answer is the same; for tests and benchmarks)
_METHODS = ("auto", "pruned", "brute")
#: slots beyond k in each row's list of the symmetric search's fused scan (its smallest values offered and their
#: partners): a row whose candidates do not all fit (ties, lattices) is recomputed by brute force at the end
_KEEP = 8
#: rows per chunk of the symmetric search's exact phase
_FINISH_ROWS = 4096
#: rows of one task of the symmetric brute force (columns per GEMM piece: _BLOCK_ENTRIES / rows, a cache-sized block
#: of products)
_BRUTE_TASK_ROWS = 1024
_BLOCK_ENTRIES = 1 << 18
#: pairs per chunk of the float64 recomputation
_EXACT_CHUNK = 1 << 17
#: (row, neighbour) entries merged at a time at the end of an exact phase (bounds its temporaries)
_MERGE_ENTRIES = 1 << 16
#: the symmetric search computes exact distances inside its block loop when it can (see ``_pruned_symmetric``)
_EXACT_IN_BLOCK = True
#: the final (row, distance, index) order uses one sort of a packed int64 key while it fits below this
_PACK_LIMIT = 2**62
#: the arrays of :attr:`KNNPlan.coords`
_COORDS = ("coords", "centred_sq", "coords_sq", "mean")
#: a plan carries the rows' coordinates while they take at most this many bytes (every part reads the blob; past
#: it each part projects the rows itself, an O(n·D·rank) GEMM, rather than every part reading a huge blob)
_COORDS_MAX_BYTES = 256 << 20


@dataclass
class KNNResult:
    """Exact neighbours, ascending by float64 Euclidean distance (ties: smaller reference index first).

    ``distances``: (Q, k) float64; ``indices``: (Q, k) int64 rows of ``reference``;
    ``query_index``: (Q,) int64 rows of ``reference`` that were the queries (self-query mode), else None.
    ``stats``: how the search went (``method``, ``pruned_fraction``, ``rank``, ``candidates_mean``); informative
    only, the answer does not depend on it. All tensors are on the CPU.
    """

    distances: torch.Tensor
    indices: torch.Tensor
    query_index: torch.Tensor | None
    stats: dict = field(default_factory=dict)


class _Clock:
    """Wall-clock seconds per phase, reported in ``KNNResult.stats["seconds"]`` (informative only)."""

    def __init__(self, stats: dict):
        self.acc = stats.setdefault("seconds", {})
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.acc[name] = round(self.acc.get(name, 0.0) + now - self.t, 4)
        self.t = now


# --------------------------------------------------------------------------------------------------------------
# error bounds


def _gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n·u / (1 - n·u); inf when n·u >= 1 (no useful bound)."""
    nu = n * u
    return nu / (1.0 - nu) if nu < 1.0 else math.inf


def _gemm_dtype(device: torch.device) -> tuple[torch.dtype, float]:
    """The dtype of the fast GEMMs and its unit roundoff.

    float32 only when torch runs float32 matmuls in IEEE float32 on this device; a lowered precision
    (TF32 / bf16 via ``torch.set_float32_matmul_precision`` or ``allow_tf32``) would void the error bounds'
    constants, so the engine then computes in float64.
    """
    lowered = torch.get_float32_matmul_precision() != "highest"
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        lowered = True
    return (torch.float64, _U64) if lowered else (torch.float32, _U32)


@dataclass
class _Bounds:
    """Per-row thresholds on computed squared distances (module docstring, step 1)."""

    E: float  # |s - t²| <= E·N² for the full-dimensional GEMM
    E_proj: float  # same for the projected GEMM
    eta: float  # |d64 - t| <= eta·N
    kappa_proj: float  # |P(x_i - x_j)| <= t + kappa_proj·N

    def upper(self, s_k: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
        """U: an upper bound of d64 for every column whose computed value is <= s_k."""
        return torch.sqrt(s_k.clamp_min(0) + self.E * N * N) + self.eta * N

    def candidate_threshold(self, U: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
        """Columns with computed s above this have d64 > U."""
        return (U + self.eta * N) ** 2 + self.E * N * N

    def projected_threshold(self, U: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
        """Columns with computed projected s above this have d64 > U."""
        return (U + (self.eta + self.kappa_proj) * N) ** 2 + self.E_proj * N * N


# --------------------------------------------------------------------------------------------------------------
# the engine


def exact_distances(
    A: torch.Tensor, ia: torch.Tensor, B: torch.Tensor, ib: torch.Tensor, *, chunk: int | None = None
) -> torch.Tensor:
    """``d_p = |A[ia[p]] - B[ib[p]]|`` in float64, difference based (docs/methods.md §0), ``chunk`` pairs at a time.

    The one definition of an exact distance in taskgauge: the kNN engine and the inter-class pair search both
    use it, so d(i, j) is the same float64 number wherever it is computed. On the CPU the fused native kernel
    (:mod:`estimators._native`, one pass over the two rows) computes it when it was built; otherwise, and on
    CUDA, torch does, converting ``chunk`` pairs at a time. Both sum the squared float64 differences, in
    different orders, so they agree to a few units of the last place.
    """
    fused = _native.pair_distances(A, ia, B, ib)
    if fused is not None:
        return fused
    out = torch.empty(ia.shape[0], dtype=torch.float64, device=A.device)
    step = chunk or max(1, _EXACT_CHUNK // max(A.shape[1], 1))
    for s in range(0, ia.shape[0], step):
        diff = B.index_select(0, ib[s : s + step]).to(torch.float64)
        diff -= A.index_select(0, ia[s : s + step]).to(torch.float64)
        out[s : s + step] = torch.linalg.vector_norm(diff, dim=1)
    return out


class _Engine:
    """State shared by the steps of one :func:`kneighbors` call.

    The search runs in two phases. *Candidates*: chunks of queries produce certified squared distances
    (step 1 of the module docstring) on a set of columns and emit (query, reference) candidate pairs.
    *Exact*: the pairs' float64 distances are computed once (a pair {i, j} met from both sides is computed
    once, which also makes d(i, j) and d(j, i) bitwise equal) and each query keeps its k best.

    GEMM frame: the reference itself when it is already in the GEMM dtype and its offset from the origin is
    moderate (no copy: the engine's working memory stays far below the data size); otherwise a centred copy
    ``x - mu`` in the GEMM dtype (far-from-origin data would make ``N = |x_i| + |x_j|`` and the bounds large).
    """

    def __init__(
        self,
        ref: torch.Tensor,
        k: int,
        device: torch.device,
        budget_bytes: int,
        stats: dict,
        frame: bool = True,
        defer_frame: bool = False,
    ):
        self.ref = ref  # (n, D) original values, float32 or float64, on device
        self.n, self.D = ref.shape
        self.k = k
        self.device = device
        self.budget = budget_bytes
        self.stats = stats
        self.clock = _Clock(stats)
        self.cdt, self.u = _gemm_dtype(device)
        self.chunk = max(1, (1 << 18) // self.D)  # rows per streaming chunk (~2 MB of float64)
        # the streaming passes share one float64 chunk (fresh temporaries per chunk would fragment the heap)
        buf = self.scratch64()
        total = torch.zeros(self.D, dtype=torch.float64, device=device)
        for _, c in self.chunks64(ref, buf):
            total += c.sum(0)
        self.mu = total / self.n
        raw = torch.empty(self.n, dtype=torch.float64, device=device)
        cen = torch.empty(self.n, dtype=torch.float64, device=device)
        for s, c in self.chunks64(ref, buf):
            raw[s : s + c.shape[0]] = torch.linalg.vector_norm(c, dim=1)
            cen[s : s + c.shape[0]] = torch.linalg.vector_norm(c.sub_(self.mu), dim=1)
        self.cnorm, self.max_cnorm = cen, float(cen.max())  # |x - mu|: the projection's frame
        # frame=False (a caller that only needs the projection, e.g. the inter-class search): never copy the data
        self.centered = frame and not (ref.dtype == self.cdt and float(raw.max()) <= 2 * self.max_cnorm)
        stats["centered_copy"] = self.centered
        if self.centered:
            self.x = None  # built by permuted_frame (the symmetric search wants it in its own row order)
            if not defer_frame:
                self.x = torch.empty(self.n, self.D, dtype=self.cdt, device=device)
                for s, c in self.chunks64(ref, buf):
                    self.x[s : s + c.shape[0]] = c.sub_(self.mu)
            self.norm = cen
        else:
            self.x = ref
            self.norm = raw
        self.max_norm = float(self.norm.max())
        self.n2c = (self.norm * self.norm).to(self.cdt)
        self.bounds = _Bounds(
            E=2.0 * (_gamma(self.D + 8, self.u) + 16 * _U64),
            E_proj=math.inf,
            eta=2.0 * _gamma(self.D + 4, _U64),
            kappa_proj=math.inf,
        )
        self.gather_buf: torch.Tensor | None = None
        self.sq_buf: torch.Tensor | None = None  # the products of :meth:`sq_dists` (reused)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.n_pairs = 0
        self.gathered: torch.Tensor | None = None  # the columns of the last sq_dists call (a view of gather_buf)
        self.examined = 0
        self.qnorm = self.norm
        self.threads = 1  # threads of the symmetric search (set by the caller)
        self.clock.lap("prepare")

    def prep_threads(self) -> int:
        """Threads for the pieces of the preparation (:func:`_in_threads`): the search's on the CPU, one elsewhere."""
        return self.threads if self.device.type == "cpu" else 1

    def permuted_frame(self, perm: torch.Tensor | None) -> torch.Tensor:
        """The GEMM frame's rows in the order ``perm`` (None: their own order): a centred copy built straight in that
        order (never two copies at once), or the reference's own rows gathered (float32 input used in place)."""
        if self.x is not None:
            return self.x if perm is None else self.x.index_select(0, perm)
        out = torch.empty(self.n, self.D, dtype=self.cdt, device=self.device)
        for s, c in self.chunks64(self.ref, self.scratch64(), perm):
            out[s : s + c.shape[0]] = c.sub_(self.mu)
        return out

    def centred64(self, rows: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
        """The rows ``rows`` of the reference minus its mean, float64 (a small sample: a new tensor)."""
        out = torch.empty(rows.numel(), self.D, dtype=torch.float64, device=self.device)
        for s, c in self.chunks64(self.ref, buf, rows):
            out[s : s + c.shape[0]] = c.sub_(self.mu)
        return out

    def scratch64(self) -> torch.Tensor:
        """A (chunk, D) float64 buffer for the streaming passes (:meth:`chunks64`)."""
        return torch.empty(min(self.chunk, max(self.n, 1)), self.D, dtype=torch.float64, device=self.device)

    def chunks64(self, src: torch.Tensor, buf: torch.Tensor, rows: torch.Tensor | None = None):
        """``(start, rows [start, start + len) of src as float64)`` for consecutive chunks, each a view of ``buf``
        (overwritten by the next step, free to modify in place); ``rows``: take those rows of ``src`` instead."""
        total = src.shape[0] if rows is None else rows.shape[0]
        stage = None  # gathered rows in src's dtype, when that is not float64
        if rows is not None and src.dtype != torch.float64:
            stage = torch.empty(buf.shape, dtype=src.dtype, device=src.device)
        for s in range(0, total, buf.shape[0]):
            e = min(total, s + buf.shape[0])
            c = buf[: e - s]
            if rows is None:
                c.copy_(src[s:e])
            elif stage is None:
                torch.index_select(src, 0, rows[s:e], out=c)
            else:
                c.copy_(torch.index_select(src, 0, rows[s:e], out=stage[: e - s]))
            yield s, c

    def rows_for(self, bytes_per_row: int) -> int:
        """How many rows of ``bytes_per_row`` working memory fit the budget."""
        return max(1, int(self.budget // max(bytes_per_row, 1)))

    def frame(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Separate query rows in the GEMM frame (GEMM dtype) and their float64 norms in that frame."""
        out = torch.empty(X.shape, dtype=self.cdt, device=self.device)
        norm = torch.empty(X.shape[0], dtype=torch.float64, device=self.device)
        for s in range(0, X.shape[0], self.chunk):
            c = X[s : s + self.chunk].to(torch.float64)
            if self.centered:
                c = c - self.mu
            norm[s : s + self.chunk] = torch.linalg.vector_norm(c, dim=1)
            out[s : s + self.chunk] = c
        return out, norm

    # -- step 1: certified distances and candidates --------------------------------------------------------------
    def sq_dists(self, q: torch.Tensor, qn2: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        """Computed squared distances ``fl(|q|² + |x_j|² - 2 q·x_j)`` (|q| × |cols|) in the GEMM dtype
        (one GEMM; ``qn2`` the queries' squared norms in the GEMM dtype)."""
        if cols is None:
            x, n2 = self.x, self.n2c
        else:
            # gathered columns go to one reused buffer (a fresh large block per call fragments the heap)
            size = cols.numel() * self.D
            if self.gather_buf is None or self.gather_buf.numel() < size:
                # grown by half at least: the column counts creep up, and each regrowth leaves a hole in the heap
                grow = 0 if self.gather_buf is None else self.gather_buf.numel() * 3 // 2
                self.gather_buf = None
                self.gather_buf = torch.empty(max(size, grow), dtype=self.x.dtype, device=self.device)
            x = torch.index_select(self.x, 0, cols, out=self.gather_buf[:size].view(cols.numel(), self.D))
            self.gathered = x
            n2 = self.n2c.index_select(0, cols)
        # the products go to one reused buffer too: a fresh block of a few MB per call lands in the heap once
        # glibc's mmap threshold has grown past it, and the heap's peak then varied from 40 to 270 MB from run to run
        # (50,000 × 12, k = 5)
        size = q.shape[0] * x.shape[0]
        if self.sq_buf is None or self.sq_buf.numel() < size:
            self.sq_buf = None
            self.sq_buf = torch.empty(size, dtype=q.dtype, device=self.device)
        s = torch.addmm(n2.unsqueeze(0), q, x.T, beta=1, alpha=-2, out=self.sq_buf[:size].view(q.shape[0], x.shape[0]))
        s += qn2.unsqueeze(1)
        return s

    def candidates(self, s: torch.Tensor, N: torch.Tensor, cols: torch.Tensor | None, rows: torch.Tensor) -> None:
        """Emit every (query, column) pair that may belong to the query's exact top-k.

        ``s``: certified squared distances (self entries +inf) of queries ``rows`` (global query positions)
        on ``cols`` (None: all reference rows); ``N``: per-row bound of ``|a_i| + |a_j|`` over these columns.
        Each row needs at least k finite entries.
        """
        self.clock.lap("gemm")
        k = self.k
        ncols = s.shape[1]
        kk = min(ncols, k + _TOPK_MARGIN)
        vals, pos = torch.topk(s, kk, dim=1, largest=False, sorted=True)
        U = self.bounds.upper(vals[:, k - 1].to(torch.float64), N)
        thr = self.bounds.candidate_threshold(U, N)
        cand = vals.to(torch.float64) <= thr.unsqueeze(1)
        if kk < ncols:
            wide = cand[:, -1]
            if bool(wide.any()):
                # rows with more than kk candidates (ties, lattices): scan all their columns
                wr = torch.nonzero(wide).flatten()
                cand[wr] = False
                sw = s.index_select(0, wr)
                r2, c2 = torch.nonzero(sw.to(torch.float64) <= thr.index_select(0, wr).unsqueeze(1), as_tuple=True)
                self.add(
                    rows.index_select(0, wr.index_select(0, r2)),
                    c2 if cols is None else cols.index_select(0, c2),
                    sw[r2, c2],
                )
        pr, pc = torch.nonzero(cand, as_tuple=True)
        gc = pos[pr, pc]
        self.add(rows.index_select(0, pr), gc if cols is None else cols.index_select(0, gc), vals[pr, pc])
        self.clock.lap("topk")

    def _compact(self, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queued ids as int32 while they fit (halves the queues' memory)."""
        small = _id_dtype(max(self.n, rows.numel()))
        return rows.to(small), cols.to(small)

    def add(self, rows: torch.Tensor, cols: torch.Tensor, sq: torch.Tensor) -> None:
        """Queue candidate pairs (query position, reference row) with their certified squared distance."""
        self.pairs.append((*self._compact(rows, cols), sq))
        self.n_pairs += rows.numel()

    # -- exact phase -----------------------------------------------------------------------------------------------
    def exact_pairs(self, A: torch.Tensor, ia: torch.Tensor, B: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
        """float64 |A[ia[p]] - B[ib[p]]| (:func:`exact_distances`), in cache-sized chunks within the budget."""
        step = max(1, min(self.rows_for(8 * 4 * self.D), _EXACT_CHUNK // max(self.D, 1)))
        return exact_distances(A, ia, B, ib, chunk=step)

    def flush(
        self, q_rows: torch.Tensor, self_idx: torch.Tensor | None, out_d: torch.Tensor, out_i: torch.Tensor
    ) -> None:
        """Exact float64 distances of the pending pairs, merged with each touched query's current best
        (``out_i`` = -1 where none yet), then its k best by (distance, reference index)."""
        if not self.pairs:
            return
        self.clock.lap("candidates")
        rows = torch.cat([p[0] for p in self.pairs]).long()
        cols = torch.cat([p[1] for p in self.pairs]).long()
        sv = torch.cat([p[2] for p in self.pairs]).to(torch.float64)
        self.pairs, self.n_pairs = [], 0
        # no (query, column) pair is queued twice between two flushes (each is met once by the search)
        # tighten: the k-th smallest certified value among a row's candidates gives a new U (k real points),
        # and candidates whose lower bound exceeds it cannot be among the k nearest (step 1). One sort by
        # (row, value): the values rounded up to float32 (>= 0) are monotone as 32-bit patterns, and rounding
        # up only loosens U.
        bits = _up(sv.clamp_min(0), torch.float32).view(torch.int32).long()
        o = torch.argsort((rows << 32) | bits)
        rs, ss = rows.index_select(0, o), bits.index_select(0, o).int().view(torch.float32).to(torch.float64)
        ids, counts = torch.unique_consecutive(rs, return_counts=True)
        full = counts >= self.k
        kth = ss.index_select(0, (torch.cumsum(counts, 0) - counts + self.k - 1).clamp_max(ss.numel() - 1))
        Nr = self.qnorm.index_select(0, ids) + self.max_norm
        thr_r = self.bounds.candidate_threshold(self.bounds.upper(kth, Nr), Nr).masked_fill(~full, math.inf)
        keep = sv.index_select(0, o) <= torch.repeat_interleave(thr_r, counts)
        rows, cols = rs[keep], cols.index_select(0, o)[keep]
        self.examined += rows.numel()
        if self_idx is not None:
            # both ends are reference rows: compute each unordered pair once (d(i, j) == d(j, i) bitwise)
            qref = self_idx.index_select(0, rows)
            lo, hi = torch.minimum(qref, cols), torch.maximum(qref, cols)
            ukey, inv = torch.unique(lo * self.n + hi, return_inverse=True)
            d = self.exact_pairs(self.ref, ukey // self.n, self.ref, ukey % self.n).index_select(0, inv)
        else:
            d = self.exact_pairs(q_rows, rows, self.ref, cols)  # rows ascending: query rows stay in cache
        self.clock.lap("exact")
        del sv, bits, o, rs, ss, keep
        self._merge_rows(rows, cols, d, out_d, out_i)

    def _merge_rows(self, rows, cols, d, out_d, out_i, ascending: bool = True) -> None:
        """Merge exact pairs with the rows' best so far: the native insertion kernel on the CPU (any order), else
        sorts over a bounded number of rows at a time (the same answer; ``rows`` sorted first unless
        ``ascending``)."""
        if _native.topk_merge(rows, cols, d, out_d, out_i):
            self.clock.lap("select")
            return
        rows, cols = rows.long(), cols.long()
        if not ascending:
            o = torch.argsort(rows)
            rows, cols, d = rows.index_select(0, o), cols.index_select(0, o), d.index_select(0, o)
        touched, counts = torch.unique_consecutive(rows, return_counts=True)
        ends = torch.cumsum(counts, 0).tolist()
        step = max(1, _MERGE_ENTRIES // (self.k + 1))
        p0 = 0
        for t0 in range(0, touched.numel(), step):
            t1 = min(touched.numel(), t0 + step)
            p1 = ends[t1 - 1]
            self._merge(touched[t0:t1], rows[p0:p1], cols[p0:p1], d[p0:p1], out_d, out_i)
            p0 = p1
        self.clock.lap("select")

    def _merge(self, touched, rows, cols, d, out_d, out_i) -> None:
        """Merge new exact pairs (``rows`` ascending, covering exactly the rows ``touched``) with those rows'
        current best and keep each row's k best by (distance, reference index)."""
        prev_i = out_i.index_select(0, touched).long()
        have = prev_i >= 0
        if bool(have.any()):
            rows = torch.cat([rows, touched.unsqueeze(1).expand_as(prev_i)[have]])
            cols = torch.cat([cols, prev_i[have]])
            d = torch.cat([d, out_d.index_select(0, touched)[have]])
        # order: by row, then distance, then reference index
        m = rows.numel()
        if (int(rows.max()) + 1) * m * self.n < _PACK_LIMIT:  # one sort of a packed (row, rank of d, column) key
            _, drank = torch.unique(d, return_inverse=True)
            o = torch.argsort((rows * m + drank) * self.n + cols)
            rows, cols, d = rows[o], cols[o], d[o]
        else:  # three stable sorts, last key first
            o = torch.argsort(cols, stable=True)
            rows, cols, d = rows[o], cols[o], d[o]
            o = torch.argsort(d, stable=True)
            rows, cols, d = rows[o], cols[o], d[o]
            o = torch.argsort(rows, stable=True)
            rows, cols, d = rows[o], cols[o], d[o]
        if bool(have.any()):  # a pair already kept by an earlier flush may come again: drop the repeat
            keep = torch.ones_like(rows, dtype=torch.bool)
            keep[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
            rows, cols, d = rows[keep], cols[keep], d[keep]
        ids, counts = torch.unique_consecutive(rows, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        ar = torch.arange(self.k, device=self.device)
        take = (starts.unsqueeze(1) + ar).clamp_max(rows.numel() - 1)
        short = ar.unsqueeze(0) >= counts.unsqueeze(1)
        out_d[ids] = d[take].masked_fill(short, math.inf)
        out_i[ids] = cols[take].masked_fill(short, -1).to(out_i.dtype)

    def maybe_flush(self, *args) -> None:
        if self.n_pairs > _FLUSH_PAIRS or self.n_pairs * 128 > self.budget // 2:
            self.flush(*args)

    # -- brute force -------------------------------------------------------------------------------------------------
    def brute_rows(self, g: torch.Tensor, q: torch.Tensor, qnorm: torch.Tensor, self_idx) -> None:
        """Candidates of the queries ``g`` (positions into ``q``/``qnorm``) against every reference row."""
        gn = qnorm.index_select(0, g)
        sq = self.sq_dists(q.index_select(0, g), (gn * gn).to(self.cdt), None)
        if self_idx is not None:
            sq[torch.arange(g.shape[0], device=self.device), self_idx.index_select(0, g)] = math.inf
        self.candidates(sq, gn + self.max_norm, None, g)

    def brute(self, q, qnorm, q_rows, self_idx, out_d, out_i, progress) -> None:
        nq = q.shape[0]
        _no_neighbours_yet(out_d, out_i)
        per_row = 4 * 3 * self.n + 64 * (self.k + _TOPK_MARGIN)
        # cache-sized blocks, not the whole budget: a bigger GEMM is no faster, and its temporaries stay resident
        step = min(self.rows_for(per_row), max(64, _BRUTE_BLOCK_BYTES // per_row))
        for s in range(0, nq, step):
            g = torch.arange(s, min(nq, s + step), device=self.device)
            self.brute_rows(g, q, qnorm, self_idx)
            self.maybe_flush(q_rows, self_idx, out_d, out_i)
            progress(min(nq, s + step) / nq * 0.95, "knn")
        self.flush(q_rows, self_idx, out_d, out_i)


def _id_dtype(n: int) -> torch.dtype:
    """Row ids inside the search: int32 while they fit (half the memory of int64), else int64."""
    return torch.int32 if n < 2**31 - 1 else torch.long


def _no_neighbours_yet(out_d: torch.Tensor, out_i: torch.Tensor) -> None:
    """The searches' starting state: every query's best list empty (distance +inf, index -1)."""
    out_d.fill_(math.inf)
    out_i.fill_(-1)


def _query_form(aug: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Query side of the augmented GEMM: ``[a, 1, |a|²]`` -> ``[-2a, |a|² - shift, 1]`` (same dtype)."""
    D = aug.shape[1] - 2
    out = torch.empty_like(aug)
    torch.mul(aug[:, :D], -2, out=out[:, :D])
    if shift is None:
        out[:, D] = aug[:, D + 1]
    else:
        out[:, D] = (aug[:, D + 1].to(torch.float64) - shift).to(aug.dtype)
    out[:, D + 1] = 1
    return out


def _orthonormal_projection(eng: _Engine, r: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """(D, r) float64 orthonormal basis close to the top-r principal directions, and |PᵀP - I|_F.

    Randomised range finder (3 power iterations) on at most 2048 sampled rows, then a Rayleigh–Ritz step (the
    top eigenvectors of the small Gram matrix of the sample in the found subspace) and a float64 QR: the pruning
    bound only needs orthonormality, which is measured, not assumed. The centred sample is streamed in chunks
    through reused buffers (never held whole: 25 MB of float32 at D = 3072). The small dense factorisations
    (D × (r + 8) QRs, an (r + 8)² eigenproblem) run in NumPy's LAPACK on the CPU: they take milliseconds, and
    torch's would map several MB of its LAPACK code (and, on CUDA, start its solver libraries) for them.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    m = min(eng.n, 2048)
    rows = torch.randperm(eng.n, generator=g)[:m].to(eng.device)
    threads = max(1, min(eng.prep_threads(), -(-m // eng.chunk)))
    bufs = [eng.scratch64() for _ in range(threads)]
    bufs32 = [torch.empty(b.shape, dtype=torch.float32, device=eng.device) for b in bufs]
    pieces = [rows[s : s + eng.chunk] for s in range(0, m, eng.chunk)]

    def centred(slot: int, piece: torch.Tensor) -> torch.Tensor:
        """The piece's rows minus the mean, float32 (a view of the thread's buffer)."""
        for _, c in eng.chunks64(eng.ref, bufs[slot], piece):
            return bufs32[slot][: c.shape[0]].copy_(c.sub_(eng.mu))
        raise AssertionError("empty piece")

    def summed(fn) -> torch.Tensor:
        """The sum over the sample's pieces of ``fn(a)`` (its pieces spread over the threads, summed in order: the
        same numbers with any thread count)."""
        parts = _in_threads(threads, pieces, lambda slot, piece: fn(centred(slot, piece)))
        total = parts[0]
        for p in parts[1:]:
            total += p
        return total

    def orthonormal(Y: torch.Tensor) -> torch.Tensor:
        q, _ = np.linalg.qr(Y.cpu().numpy().astype(np.float64))
        return torch.from_numpy(q).to(eng.device)

    W = torch.randn(eng.D, r + 8, generator=g, dtype=torch.float32).to(eng.device)
    for _ in range(3):
        Y = summed(lambda a, W=W: a.T @ (a @ W))  # Y = AᵀA W
        W = orthonormal(Y).to(torch.float32)

    def gram(a: torch.Tensor) -> torch.Tensor:
        b = (a @ W).to(torch.float64)
        return b.T @ b

    G = summed(gram)  # (A W)ᵀ(A W): its top eigenvectors are the top right singular vectors of A W
    _, V = np.linalg.eigh(G.cpu().numpy())
    top = torch.from_numpy(np.ascontiguousarray(V[:, ::-1][:, : min(r, m)])).to(eng.device)
    P = orthonormal(W.to(torch.float64) @ top)
    return P, _gram_error(P)


def _gram_error(P: torch.Tensor) -> float:
    """``|PᵀP - I|_F`` of float64 directions ``P``, plus a little (the orthonormality the pruning bounds assume)."""
    gram_err = P.T @ P - torch.eye(P.shape[1], dtype=torch.float64, device=P.device)
    return float((gram_err * gram_err).sum().sqrt()) + 1e-14


def _kmeans(
    z: torch.Tensor, m: int, iters: int = 6, seed: int = 0, sample: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means (labels, centroids); only the grouping quality depends on it, never the answer.

    With ``sample`` (rows per cluster), the Lloyd iterations run on ``sample·m`` random rows and one assignment
    pass then labels every row (the passes over all rows were most of the cost; the centroids of a few dozen
    rows each group as well)."""
    n = z.shape[0]
    g = torch.Generator(device="cpu").manual_seed(seed)
    order = torch.randperm(n, generator=g).to(z.device)
    cent = z[order[:m]].clone()
    zs = z if sample is None or sample * m >= n else z.index_select(0, order[: sample * m])
    step = max(1, (1 << 19) // max(m, 1))  # 2 MB of float32 distances per chunk

    def assign(x: torch.Tensor) -> torch.Tensor:
        c2 = (cent * cent).sum(1)
        labels = torch.empty(x.shape[0], dtype=torch.long, device=z.device)
        for s in range(0, x.shape[0], step):
            labels[s : s + step] = torch.addmm(c2.unsqueeze(0), x[s : s + step], cent.T, alpha=-2).argmin(1)
        return labels

    for _ in range(iters):
        labels = assign(zs)
        counts = torch.bincount(labels, minlength=m).to(z.dtype)
        sums = torch.zeros_like(cent).index_add_(0, labels, zs)
        keep = counts > 0
        cent[keep] = sums[keep] / counts[keep].unsqueeze(1)
    return assign(z), cent


@dataclass(frozen=True, eq=False)
class _SymmetricPart:
    """One part of a symmetric search split by :func:`kneighbors_part`: what the plan computed once (the grouping,
    every row's first bound U, the projection's directions and candidate ranks, which part runs each cluster) and
    which part this is. ``bounds`` None: the part of the bounds stage (:func:`bounds_part`), which computes U for
    its share of the rows from ``homes`` (each cluster's home clusters, CSR) and runs no block."""

    labels: torch.Tensor
    clusters: int
    bounds: torch.Tensor | None
    basis: torch.Tensor
    owner: torch.Tensor
    index: int
    count: int
    ranks: tuple[int, ...]
    coords: tuple[torch.Tensor, ...] | None = None
    homes: tuple[torch.Tensor, torch.Tensor] | None = None


def _part_owners(counts: list[int], count: int) -> list[int]:
    """Which of ``count`` parts runs each cluster: in the permuted order, each cluster goes to the part with the
    fewest pairs so far (a cluster at position s meets its rows × the n − s columns after s). The parts thus take
    interleaved clusters from the whole order, early (many columns) and late alike, so their shares of the work stay
    even however the pruning's cost varies along the order (consecutive ranges of equal pairs did not: the early
    clusters' blocks prune differently from the late ones'). Ties go to the lower part; integer arithmetic."""
    n, pos = sum(counts), 0
    load = [0] * count
    owner = []
    for c in counts:
        p = min(range(count), key=load.__getitem__)
        owner.append(p)
        load[p] += c * (n - pos)
        pos += c
    return owner


def _home_need(k: int) -> int:
    """Reference points whose exact distances give a query's first upper bound U: ``_HOME_NEED`` for k >= 11,
    fewer for small k (TwoNN's k = 2 needs a good 2nd neighbour, not 384 candidates), never under 2(k + 1)."""
    return max(2 * (k + 1), min(_HOME_NEED, max(128, 32 * (k + 1))))


def _home_clusters(cent: torch.Tensor, counts: list[int], need: int, batch: int = 256) -> list[list[int]]:
    """For every cluster, its own and then the clusters with the nearest centroids, until their members add up to
    ``need`` points (or all clusters are used); empty clusters are skipped.

    Only the home sets are kept (a few clusters each): no m × m order of all centroids, which would not fit in
    memory for a million points (m ≈ 16k clusters). Nearest lists come from batched ``topk``; a row whose first
    ``t`` clusters are too small falls back to its full order. The answer of the search never depends on this
    choice (it only sets the first upper bounds U)."""
    m = cent.shape[0]
    c64 = cent.to(torch.float64)
    c2 = (c64 * c64).sum(1)
    t = min(m, 64)
    out: list[list[int]] = []
    for b0 in range(0, m, batch):
        # squared centroid distances (their order is all that matters here)
        d = torch.addmm(c2[b0 : b0 + batch].unsqueeze(1) + c2.unsqueeze(0), c64[b0 : b0 + batch], c64.T, alpha=-2)
        nb = d.shape[0]
        d[torch.arange(nb, device=d.device), torch.arange(b0, b0 + nb, device=d.device)] = -math.inf  # own first
        order = torch.topk(d, t, dim=1, largest=False, sorted=True).indices.tolist()
        for i, row in enumerate(order):
            home: list[int] = []
            tot = 0
            for walk in (row, None):
                if walk is None:  # the t nearest were not enough: the full order of this row
                    walk = torch.argsort(d[i], stable=True).tolist()
                    home, tot = [], 0
                for c_ in walk:
                    if counts[c_]:
                        home.append(c_)
                        tot += counts[c_]
                    if tot >= need:
                        break
                if tot >= need or t == m:
                    break
            out.append(home)
    return out


@dataclass
class _Projection:
    """Projected coordinates (augmented ``[w, 1, |w|²]`` with ``w = [z, rho]``, GEMM dtype; ``r`` = the length of
    ``w``) and the k-means grouping of the reference."""

    r: int
    z: torch.Tensor
    zq: torch.Tensor | None
    labels: torch.Tensor
    cent: torch.Tensor


def _projection(eng: _Engine, q_rows: torch.Tensor | None, self_idx: torch.Tensor | None) -> _Projection:
    """Principal-direction projection of the reference (and of separate queries), its error constants
    (set on ``eng.bounds``), and a k-means grouping of the projected reference."""
    r = int(min(_RANK_MAX, max(16, eng.D // 12), eng.D))
    r, z, zq = _embed(eng, r, q_rows, self_idx)
    m = max(1, round(eng.n / _CLUSTER_SIZE))
    labels, cent = _kmeans(z[:, : r + 1].to(torch.float32), m)
    release_freed_memory(eng.device)  # the projection's and k-means' chunk temporaries
    eng.clock.lap("kmeans")
    return _Projection(r=r + 1, z=z, zq=zq, labels=labels, cent=cent)


def _embed(eng: _Engine, r: int, q_rows: torch.Tensor | None, self_idx: torch.Tensor | None, seed: int = 0):
    """The lower-bound embedding of step 2 (module docstring): augmented ``[w, 1, |w|²]`` rows (GEMM dtype) of the
    reference and of the queries (``None`` when there are none), with ``w = [(x - mu) P, rho]`` for ``r``
    orthonormal principal directions ``P``; sets the error constants ``E_proj`` and ``kappa_proj`` of
    ``eng.bounds``; returns ``(r, z, zq)`` with ``r`` = the number of directions found (fewer than asked when
    the sample has fewer rows)."""
    D, dev, stats = eng.D, eng.device, eng.stats
    P, p_err = _orthonormal_projection(eng, r, seed)
    release_freed_memory(dev)  # the sample and the range finder's temporaries
    r = int(P.shape[1])
    stats["rank"] = r
    eng.clock.lap("pca")

    def project(src: torch.Tensor) -> torch.Tensor:
        """float64 ``w = [(x - mu) P, rho]`` with the residual norm ``rho = sqrt(|x - mu|² - |(x - mu) P|²)``,
        rounded to the GEMM dtype (error <= u·|w|), augmented as ``[w, 1, |w|²]``.

        ``|w_i - w_j|² = |P(x_i - x_j)|² + (rho_i - rho_j)² <= |x_i - x_j|²`` (Pythagoras, then the reverse
        triangle inequality on the orthogonal complement), a tighter lower bound than the projection alone."""
        out = torch.empty(src.shape[0], r + 3, dtype=eng.cdt, device=dev)
        for s, a in eng.chunks64(src, buf):
            e = s + a.shape[0]
            zz = a.sub_(eng.mu) @ P
            z2 = (zz * zz).sum(1)
            rho = (a.square_().sum(1) - z2).clamp_min(0).sqrt()
            out[s:e, :r] = zz
            out[s:e, r] = rho
            out[s:e, r + 1] = 1
            out[s:e, r + 2] = z2 + rho * rho
        return out

    buf = eng.scratch64()

    z = project(eng.ref)
    zq: torch.Tensor | None
    if self_idx is not None:
        zq = z.index_select(0, self_idx)
    else:
        zq = project(q_rows) if q_rows is not None else None
    eng.bounds.E_proj, eng.bounds.kappa_proj = _proj_constants(r, D, eng.u, p_err)
    eng.clock.lap("project")
    return r, z, zq


def _proj_constants(r: int, D: int, u: float, p_err: float) -> tuple[float, float]:
    """``(E_proj, kappa_proj)`` of an embedding with ``r`` directions of Gram error ``p_err`` (:func:`_embed`)."""
    # computed projected squared distance minus the row threshold, from one GEMM of length r + 2 whose
    # terms sum to at most ~2.2·N² (the threshold is below ~1.1·N²), plus the roundings of the augmented
    # norm and threshold entries: 2.2·gamma_{r+5}; bounded by 4·gamma_{r+12}
    E_proj = 4.0 * (_gamma(r + 13, u) * (1 + 4 * u + 2 * p_err) + 16 * _U64)
    # |w̃_i - w̃_j| <= |(P(a_i - a_j), rho_i - rho_j)| + u·N (rounding of w) + float64 product error, and
    # |(P v, rho_i - rho_j)| <= (1 + p_err)|v|; the computed rho differs from the exact residual norm of the
    # orthogonal projector onto span(P) by at most sqrt(c)·|a| with |rhõ² - rho²| <= c·|a|²,
    # c = p_err + 2·gamma_{D+4}·(sqrt(r) + 1) + O(u64) (cancellation in |a|² - |z|²), counted twice (both ends)
    c_rho = p_err + 2.0 * _gamma(D + 4, _U64) * (math.sqrt(r) + 1) + 16 * _U64
    kappa_proj = 2.0 * (u + p_err + _gamma(D + 4, _U64) * math.sqrt(r) + 8 * _U64 + 2.0 * math.sqrt(4.0 * c_rho))
    return E_proj, kappa_proj


class _Prefixes:
    """The embedding of step 2 at several ranks from one projection: ``w_r = [(x - mu) P[:, :r], rho_r]`` with
    ``rho_r = sqrt(|x - mu|² - |(x - mu) P[:, :r]|²)``, as :func:`_embed` computes it at rank r (the leading r
    columns of an orthonormal P are orthonormal, with at most P's Gram error). The directions are found first
    (what :meth:`_Pilot.kept` needs); :meth:`project` then maps every row."""

    def __init__(self, eng: _Engine, ranks: tuple[int, ...], seed: int = 0, basis: torch.Tensor | None = None):
        self.eng = eng
        if basis is None:
            self.P, self.p_err = _orthonormal_projection(eng, max(ranks), seed)
            release_freed_memory(eng.device)
        else:  # directions found elsewhere (a part's plan): their Gram error measured here, not taken on trust
            self.P, self.p_err = basis.to(eng.device, torch.float64), _gram_error(basis.to(eng.device, torch.float64))
        self.ranks = tuple(sorted({min(r, int(self.P.shape[1])) for r in ranks}))
        self.D, self.u, self.cdt, self.dev = eng.D, eng.u, eng.cdt, eng.device
        eng.clock.lap("pca")

    def project(self, known: tuple[torch.Tensor, ...] | None = None) -> None:
        """The leading coordinates and squared norms of every row (what :meth:`at` assembles); ``known``: those
        arrays as :attr:`KNNPlan.coords` holds them (coordinates at the largest rank, squared norms at each rank),
        taken as they are instead when they are this computation's (a part: the plan made them), i.e. at these
        ranks, in this engine's GEMM dtype, about its very mean."""
        eng, n, rmax = self.eng, self.eng.n, int(self.P.shape[1])
        if (
            known is not None
            and known[0].shape == (n, rmax)
            and known[0].dtype == eng.cdt
            and known[2].shape == (n, len(self.ranks))
            and torch.equal(known[3].to(self.dev), eng.mu)
        ):
            self.zz, self.a2, self.z2 = known[0].to(self.dev), known[1].to(self.dev), known[2].to(self.dev)
            eng.clock.lap("project")
            return
        self.zz = torch.empty(n, rmax, dtype=eng.cdt, device=self.dev)
        self.a2 = torch.empty(n, dtype=torch.float64, device=self.dev)
        self.z2 = torch.empty(n, len(self.ranks), dtype=torch.float64, device=self.dev)
        # pieces of a few chunks, spread over the search's threads (each with its own float64 buffer)
        step = eng.chunk * 4
        bufs = [eng.scratch64() for _ in range(max(1, min(eng.prep_threads(), -(-n // step))))]

        def piece(slot: int, s0: int) -> None:
            for s, a in eng.chunks64(eng.ref[s0 : s0 + step], bufs[slot]):
                s, e = s0 + s, s0 + s + a.shape[0]
                zz = a.sub_(eng.mu) @ self.P
                self.zz[s:e] = zz
                sq = zz * zz
                for j, r in enumerate(self.ranks):
                    self.z2[s:e, j] = sq[:, :r].sum(1)
                self.a2[s:e] = a.square_().sum(1)

        _in_threads(len(bufs), list(range(0, n, step)), piece)
        eng.clock.lap("project")

    def at(self, r: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Augmented ``[w_r, 1, |w_r|²]`` (GEMM dtype) of all rows, or of ``rows`` in that order."""
        j = self.ranks.index(r)
        m = self.zz.shape[0] if rows is None else rows.numel()
        out = torch.empty(m, r + 3, dtype=self.cdt, device=self.dev)
        for s in range(0, m, 4096):  # 4096 rows at a time: no temporary the size of the coordinates
            e = min(m, s + 4096)
            zz, a2, z2 = self.zz[s:e, :r], self.a2[s:e], self.z2[s:e, j]
            if rows is not None:
                i = rows[s:e]
                zz, a2, z2 = (
                    self.zz[:, :r].index_select(0, i),
                    self.a2.index_select(0, i),
                    self.z2[:, j].index_select(0, i),
                )
            rho = (a2 - z2).clamp_min(0).sqrt()
            out[s:e, :r] = zz
            out[s:e, r] = rho
            out[s:e, r + 1] = 1
            out[s:e, r + 2] = z2 + rho * rho
        return out

    def constants(self, r: int) -> tuple[float, float]:
        """``(E_proj, kappa_proj)`` at rank r."""
        return _proj_constants(r, self.D, self.u, self.p_err)


@dataclass
class LowerBoundEmbedding:
    """Rows mapped to ``rank + 1`` dimensions whose distances bound the float64 distances from below (step 2 of
    the module docstring), with the certified error constants needed to prune exactly with them.

    ``w``: (n, rank + 1) in the GEMM dtype, ``[(x - mu) P, rho]``; ``aug``: ``[w, 1, |w|²]`` for the certified
    GEMM of :meth:`sq_dists`; ``cnorm``: float64 ``|x - mu|``. Any pair with float64 distance ``d_ij <= T`` has a
    computed squared embedded distance ``s_ij <= threshold(T, N)`` for ``N >= cnorm_i + cnorm_j``, whether
    ``s`` comes from :meth:`sq_dists` or from another float32 L2 kernel with error at most ``E_proj·N²``
    (faiss's exhaustive ``IndexFlatL2``: two norms and one inner product of length ``rank + 1`` per pair, error
    below ``2·gamma_{rank+3}·N²``, or a direct sum of squared differences, smaller still).
    """

    w: torch.Tensor
    aug: torch.Tensor
    cnorm: torch.Tensor
    rank: int
    bounds: _Bounds

    def threshold(self, T: float, N: float) -> float:
        """A bound on the computed squared embedded distance of every pair with float64 distance <= ``T``."""
        t = torch.tensor([T], dtype=torch.float64)
        return float(_up(self.bounds.projected_threshold(t, torch.tensor([N], dtype=torch.float64)), self.w.dtype))

    def reference(self, ri: torch.Tensor) -> torch.Tensor:
        """The reference side of :meth:`sq_dists` for the rows ``ri`` (gathered once, reused for many queries)."""
        return self.aug.index_select(0, ri).T.contiguous()

    def sq_dists(self, qi: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Computed squared embedded distances of the rows ``qi`` to ``ref`` (from :meth:`reference`): one GEMM
        of the augmented rows, the GEMM whose error ``E_proj`` bounds."""
        return _query_form(self.aug.index_select(0, qi)) @ ref


def lower_bound_embedding(
    X: torch.Tensor | np.ndarray, rank: int, *, seed: int = 0, device: torch.device | str = "cpu"
) -> LowerBoundEmbedding:
    """The kNN engine's principal-direction embedding of ``X`` (``rank`` directions, fewer when ``D`` or the
    2048-row sample is smaller) as a :class:`LowerBoundEmbedding`; no copy of ``X`` is made."""
    X = _as_matrix(X, "X")
    dev = torch.device(device)
    eng = _Engine(X.to(dev), 1, dev, 1 << 30, {}, frame=False)
    r, z, _ = _embed(eng, max(1, min(int(rank), eng.D)), None, None, seed)
    return LowerBoundEmbedding(w=z[:, : r + 1], aug=z, cnorm=eng.cnorm, rank=r, bounds=eng.bounds)


def _up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` rounded to ``dtype`` and then one ulp up, so ``y <= x`` implies ``y <= _up(x)``."""
    y = x.to(dtype)
    return torch.nextafter(y, torch.full_like(y, math.inf))


def _in_threads(threads: int, tasks: Iterable, fn) -> list:
    """``[fn(slot, task) for task in tasks]`` with the tasks spread over ``threads`` threads (``slot``: the thread's
    number, for its own buffers; the calling thread is slot 0), each running torch with one intra-op thread and
    taking the next task when done (no barrier inside a task: a thread slowed by another process on its core only
    does fewer tasks). ``tasks`` may be an iterator (taken from under a lock, so its ``__next__`` need not be
    thread-safe). The results come in the tasks' order, so a caller that combines them in that order gets the same
    numbers with any thread count."""
    if isinstance(tasks, Sized):
        threads = min(threads, len(tasks))
    if threads <= 1:
        return [fn(0, t) for t in tasks]
    lock = threading.Lock()
    it = enumerate(tasks)
    out: dict[int, Any] = {}
    failed: list[BaseException] = []

    def loop(slot: int) -> None:
        saved = torch.get_num_threads()
        if saved > 1:
            torch.set_num_threads(1)  # this thread's OpenMP setting
        try:
            while True:
                with lock:
                    if failed or (nxt := next(it, None)) is None:
                        return
                i, task = nxt
                out[i] = fn(slot, task)
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            with lock:
                failed.append(e)
        finally:
            if torch.get_num_threads() != saved:
                torch.set_num_threads(saved)

    others = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(1, threads)]
    for t in others:
        t.start()
    loop(0)
    for t in others:
        t.join()
    if failed:
        raise failed[0]
    return [out[i] for i in range(len(out))]


class _Worker:
    """One thread's state in :class:`_Workers`: its list of each row's K smallest values offered (with partners),
    and its reused buffers."""

    def __init__(self, device):
        self.scanner = _native.BlockScan() if _native.available() else None
        self.kv: torch.Tensor | None = None
        self.ki: torch.Tensor | None = None
        self.device = device
        self.gbuf: torch.Tensor | None = None
        self.pbuf: torch.Tensor | None = None
        self.dbuf: torch.Tensor | None = None
        self.fbuf: list[torch.Tensor] | None = None
        self.queued = 0
        self.seconds: dict[str, float] = {}

    def clock(self, name: str, sec: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + sec

    def gather(self, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Rows ``cols`` of ``x`` in this worker's reused buffer (fresh large blocks per call fragment the heap)."""
        size = cols.numel() * x.shape[1]
        if self.gbuf is None or self.gbuf.numel() < size or self.gbuf.dtype != x.dtype:
            grow = 0 if self.gbuf is None else self.gbuf.numel() * 3 // 2
            self.gbuf = None
            self.gbuf = torch.empty(max(size, grow), dtype=x.dtype, device=self.device)
        return torch.index_select(x, 0, cols, out=self.gbuf[:size].view(cols.numel(), x.shape[1]))

    def proj_buffer(self, size: int, dtype: torch.dtype) -> torch.Tensor:
        if self.pbuf is None or self.pbuf.numel() < size or self.pbuf.dtype != dtype:
            self.pbuf = None
            self.pbuf = torch.empty(size, dtype=dtype, device=self.device)
        return self.pbuf

    def sq_dists(self, q, qn2, x, n2, cols) -> torch.Tensor:
        """``fl(|q|² + |x_j|² - 2 q·x_j)`` for the rows of ``x`` (or its rows ``cols``): the certified GEMM of
        step 1, as :meth:`_Engine.sq_dists` computes it."""
        if cols is not None:
            x, n2 = self.gather(x, cols), n2.index_select(0, cols)
        s = torch.addmm(n2.unsqueeze(0), q, x.T, beta=1, alpha=-2)
        s += qn2.unsqueeze(1)
        return s

    def frame_rows(self, eng: _Engine, x, s: int, e: int, slot: int, perm=None) -> torch.Tensor:
        """The GEMM frame's rows at positions [s, e): a view of ``x`` when the frame is held whole, else built from
        the reference (:meth:`_build`; position p is reference row ``perm[p]``, or p without ``perm``)."""
        if x is not None:
            return x[s:e]
        return self._build(eng, slot, None if perm is None else perm[s:e], s, e - s)

    def frame_take(self, eng: _Engine, x, pos: torch.Tensor, slot: int, perm=None) -> torch.Tensor:
        """The GEMM frame's rows at the positions ``pos`` (gathered from ``x`` when it is held, else built)."""
        if x is not None:
            return self.gather(x, pos)
        return self._build(eng, slot, pos if perm is None else perm.index_select(0, pos), 0, pos.numel())

    def _build(self, eng: _Engine, slot: int, idx: torch.Tensor | None, start: int, m: int) -> torch.Tensor:
        """Reference rows ``idx`` (or ``start .. start + m``) in the GEMM frame, in this worker's buffer ``slot``
        (0: a block's rows, 1: its columns): ``x - mu`` in float64 rounded to the GEMM dtype when the engine
        centres (the same numbers as :meth:`_Engine.permuted_frame`; the native kernel ``tg_frame_rows`` in one
        pass), the rows themselves otherwise (a range of them is a view). The symmetric search then needs no copy
        of the whole data beside the reference."""
        D = eng.D
        if not eng.centered and idx is None:  # the reference is the frame (GEMM dtype, not centred)
            return eng.ref[start : start + m]
        t = time.perf_counter()
        if self.fbuf is None:
            self.fbuf = [torch.empty(0, dtype=eng.cdt, device=self.device) for _ in range(2)]
        if self.fbuf[slot].numel() < m * D:
            self.fbuf[slot] = torch.empty(0, dtype=eng.cdt, device=self.device)  # the old one goes first
            self.fbuf[slot] = torch.empty(m * D, dtype=eng.cdt, device=self.device)
        out = self.fbuf[slot][: m * D].view(m, D)
        if not eng.centered:
            torch.index_select(eng.ref, 0, idx, out=out)
        elif not _native.frame_rows(eng.ref, eng.mu, out, idx, start):  # torch: the same numbers, a float64 temporary
            src = eng.ref[start : start + m] if idx is None else eng.ref.index_select(0, idx)
            out.copy_(src.to(torch.float64) - eng.mu)
        self.clock("build", time.perf_counter() - t)
        return out

    def products(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``q @ x.T`` (one GEMM) in this worker's reused buffer: the products the fused scan turns into certified
        values (no pass of its own to add the norms)."""
        size = q.shape[0] * x.shape[0]
        if self.dbuf is None or self.dbuf.numel() < size or self.dbuf.dtype != q.dtype:
            self.dbuf = None
            self.dbuf = torch.empty(size, dtype=q.dtype, device=self.device)
        return torch.mm(q, x.T, out=self.dbuf[:size].view(q.shape[0], x.shape[0]))

    def scan(self, dot, nb, rn2, cn2, rpos, cpos) -> None:
        """The fused top-k scan of one block (``tg_block_scan``): the certified values ``rn2_i + cn2_j - 2 dot_ij``
        tested in both directions, the offers kept in this worker's lists."""
        self.queued += self.scanner.run(
            dot, nb, rn2, cn2, rpos, cpos, self.kv, self.ki, self.k, self.thr, self.Nrow, self.E, self.eta
        )


class _Workers:
    """Coarse parallelism: whole tasks (blocks of rows) go to ``threads`` threads, each running torch with one
    intra-op thread, taking the next task when it is done with one (no barrier per small piece: a thread slowed
    by another process on its core only does fewer tasks). The calling thread is worker 0 (it reports
    progress). With the fused scan (:meth:`start_scan`), the exact phase runs when the block loop is done
    (:meth:`_finish`): the workers' lists hold every candidate."""

    def __init__(self, threads: int, eng, n: int, k: int, out_d, out_i, perm=None):
        self.threads = threads
        self.n, self.k, self.perm, self.ref = n, k, perm, eng.ref
        self.out_d, self.out_i = out_d, out_i
        _no_neighbours_yet(out_d, out_i)
        self.workers = [_Worker(eng.device) for _ in range(threads)]
        self.examined = self.queued = 0
        self._lock = threading.Lock()
        self.fallback_rows = 0
        self.seconds: dict[str, float] = {}
        self._saved = None
        self.scanning = False

    def __enter__(self):
        self._saved = torch.get_num_threads()
        if self.threads > 1 or self._saved > 1:
            torch.set_num_threads(1)
        return self

    def start_scan(self, eng, x, n2: torch.Tensor, thr: torch.Tensor, Nrow: torch.Tensor, bounds: _Bounds):
        """State of the fused top-k scan on the GEMM frame ``x`` (rows by position, None: built on the fly from
        ``eng``; float32 squared norms ``n2``):
        each worker's lists empty (``_KEEP`` slots per row beyond k), thresholds ``thr`` (float32, per position; one
        array that all workers read and tighten), ``Nrow`` the per-row N of the bounds (float64).

        Each worker tightens a row's threshold from its own list of the row's smallest values; two workers may
        write the same entry at once. Every value ever written is a valid threshold (from k real points' certified
        values), and an aligned 4-byte store is never torn, so an interleaving can only leave a looser valid
        value: sharing the array lets each worker prune with what the others found."""
        self.eng, self.x, self.n2, self.Nrow, self.bounds = eng, x, n2, Nrow.contiguous(), bounds
        self.scanning = True
        self.thr = thr.clone()
        K = self.k + _KEEP
        for w in self.workers:
            w.kv = torch.full((self.n, K), math.inf, dtype=torch.float32)
            w.ki = torch.full((self.n, K), -1, dtype=torch.int32)
            w.k, w.thr, w.Nrow, w.E, w.eta = self.k, self.thr, self.Nrow, bounds.E, bounds.eta

    def _finish(self) -> None:
        """The exact phase of the fused scan. Each pair was offered to a row by one worker at most, so the k smallest
        values of all the workers' lists together are the row's k smallest certified values: they give its final
        threshold (the brute force's own), never above the shared one. Every offer not kept in a list is at least
        that list's last value; so when each full list's last value lies above the final threshold, the lists
        hold all the row's candidates, which get their float64 distances (the pair kernel) and the k best are kept.
        Other rows (more candidates than the lists hold: ties, lattices) are recomputed against every column
        (:meth:`_rows_by_brute_force`)."""
        t = time.perf_counter()

        def chunk(slot: int, r0: int) -> torch.Tensor:  # noqa: ARG001 - rows [r0, r1); returns its short rows
            r1 = min(self.n, r0 + rows_per)
            kv = torch.cat([w.kv[r0:r1] for w in self.workers], 1)
            sk = torch.topk(kv, self.k, dim=1, largest=False, sorted=True).values[:, -1].to(torch.float64)
            N = self.Nrow[r0:r1]
            thr = _up(self.bounds.candidate_threshold(self.bounds.upper(sk, N), N), torch.float32)
            thr = torch.where(torch.isfinite(sk), thr, torch.full_like(thr, math.inf))
            thr = torch.minimum(thr, self.thr[r0:r1], out=self.thr[r0:r1])  # the final thresholds, kept
            last = torch.stack([w.kv[r0:r1, -1] for w in self.workers], 1)
            short = (last <= thr.unsqueeze(1)).any(1)
            take = kv <= thr.unsqueeze(1)
            take[short] = False
            rows, slots = torch.nonzero(take, as_tuple=True)
            cols = torch.cat([w.ki[r0:r1] for w in self.workers], 1)[rows, slots].long()
            self._exact(rows + r0, cols)
            return torch.nonzero(short).flatten() + r0

        # rows a chunk at a time (bounded temporaries), the chunks spread over the threads, each running torch and the
        # pair kernel in one thread (no barrier per small step; a chunk's rows are merged by its thread only)
        rows_per = max(512, min(_FINISH_ROWS, -(-self.n // (4 * self.threads))))
        short_rows = _in_threads(self.threads, list(range(0, self.n, rows_per)), chunk)
        short_pos = torch.cat(short_rows)
        self.fallback_rows = int(short_pos.numel())
        if self.fallback_rows:
            self._rows_by_brute_force(short_pos, self.thr)
        self.seconds["exact"] = self.seconds.get("exact", 0.0) + time.perf_counter() - t

    def _exact(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Float64 distances of the (row, column) position pairs, merged into the answer's rows."""
        if self.perm is not None:  # positions -> reference rows
            rows, cols = self.perm.index_select(0, rows), self.perm.index_select(0, cols)
        d = exact_distances(self.ref, rows, self.ref, cols)
        _native.topk_merge(rows, cols, d, self.out_d, self.out_i)
        with self._lock:
            self.examined += int(rows.numel())

    def _rows_by_brute_force(self, pos: torch.Tensor, thr: torch.Tensor) -> None:
        """Rows (positions) whose candidates the lists may not all hold: their certified values against every
        column, those within the final threshold measured exactly."""
        n2, w, eng, x, perm = self.n2, self.workers[0], self.eng, self.x, self.perm
        for s in range(0, pos.numel(), 256):
            g = pos[s : s + 256]
            q = x.index_select(0, g) if x is not None else w.frame_take(eng, None, g, 0, perm)
            for c0 in range(0, self.n, 1024):
                c1 = min(self.n, c0 + 1024)
                cols = w.frame_rows(eng, x, c0, c1, 1, perm)
                v = (n2.index_select(0, g).unsqueeze(1) + n2[c0:c1].unsqueeze(0)) - 2 * (q @ cols.T)
                v[(g >= c0) & (g < c1), (g - c0)[(g >= c0) & (g < c1)]] = math.inf  # self
                r, c = torch.nonzero(v <= thr.index_select(0, g).unsqueeze(1), as_tuple=True)
                self._exact(g.index_select(0, r), c + c0)

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                if self.threads > 1:  # the exact phase below runs threaded
                    torch.set_num_threads(self.threads)
                if self.scanning:
                    self._finish()
                for w in self.workers:
                    self.queued += w.queued
                    for name, sec in w.seconds.items():
                        self.seconds[name] = self.seconds.get(name, 0.0) + sec
            self.workers = []
        finally:
            if self._saved is not None and torch.get_num_threads() != self._saved:
                torch.set_num_threads(self._saved)
        return False

    def run(self, tasks, fn, progress=None) -> None:
        """``fn(worker, task)`` for every task of the iterable ``tasks`` (:func:`_in_threads`); ``progress()`` after
        each task the calling thread runs."""

        def step(slot: int, task) -> None:
            fn(self.workers[slot], task)
            if slot == 0 and progress is not None:
                progress()

        _in_threads(self.threads, tasks, step)


class _Chooser:
    """The tasks of the symmetric search, and for each the form it runs in (:func:`_pruned_symmetric`).

    A pruned block measures its projected test, its GEMM on the surviving columns and its candidate pass. The
    same block by brute force would cost its GEMM on *all* its columns (at the GEMM rate measured on the blocks
    so far, per (row, column) pair) plus the same candidate pass. Both are measured at the same moment on the same
    machine, so their ratio does not depend on the load. Recent blocks weigh more (decay ``_DECAY`` per block);
    once the pruned blocks cost more than their brute-force estimate (by ``_SWITCH_MARGIN``, on ``_SWITCH_STREAK``
    consecutive reports), blocks run by brute force (several small consecutive clusters together, up to
    ``_BRUTE_ROWS`` rows), and every ``_PROBE_EVERY``-th task still runs pruned, so the choice can go back (by the
    same margin and streak) when pruning starts to pay again (denser regions of the data)."""

    def __init__(self, units, n: int, force: str | None):
        self.units, self.n, self.force = units, n, force
        # a brute-force task: up to _BRUTE_ROWS rows, and at most 1/64 of the rows (tasks stay many enough for the
        # threads to share the work evenly to the end, and for progress reports)
        self.brute_rows = min(_BRUTE_ROWS, max(32, n // 64))
        self.pos = 0
        self.lock = threading.Lock()
        self.mode = force or "pruned"
        self.tasks = 0
        self.pr_s = self.br_s = 0.0
        self.g_s = self.g_p = self.k_s = self.b_s = self.b_c = 0.0
        self.seen = self.survivors = 0
        self.counts = {"pruned": 0, "brute": 0}
        self.switches: list[int] = []
        self.streak = 0  # consecutive reports whose comparison favours the other form by the margin

    def __iter__(self):
        return self

    def __next__(self):
        with self.lock:
            if self.pos >= len(self.units):
                raise StopIteration
            self.tasks += 1
            mode = self.mode
            if self.force is None and mode == "brute" and self.tasks % _PROBE_EVERY == 0:
                mode = "pruned"
            group = [self.units[self.pos]]
            self.pos += 1
            rows = group[0][2] - group[0][1]
            while mode == "brute" and self.pos < len(self.units):
                u = self.units[self.pos]
                if rows + u[2] - u[1] > self.brute_rows:
                    break
                group.append(u)
                rows += u[2] - u[1]
                self.pos += 1
            self.counts[mode] += 1
            return mode, group

    def report(self, mode, group, rows, cols_all, ncols, t_proj, t_gemm, t_kernel, t_total, t_cols) -> None:  # noqa: ARG002
        with self.lock:
            self.seen += sum((e - s) * (self.n - s) for _, s, e in group)
            self.survivors += rows * ncols
            if ncols:
                self.g_s = self.g_s * _DECAY + t_gemm
                self.k_s = self.k_s * _DECAY + t_kernel
                self.g_p = self.g_p * _DECAY + rows * ncols
                self.b_s = self.b_s * _DECAY + t_cols
                self.b_c = self.b_c * _DECAY + ncols
            if mode != "pruned" or not self.g_p:
                return
            # the block by brute force: the GEMM and the scan on all its columns (at the running rates per entry),
            # and building those columns (at the running rate per column), once per brute-force task of up to
            # brute_rows rows (what a brute-force task costs beyond its GEMM: without it, on float64 input, the
            # estimate was about 1/3 below the real cost and the choice went to the brute force too early)
            est = (self.g_s + self.k_s) / self.g_p * rows * cols_all
            est += self.b_s / max(self.b_c, 1e-12) * cols_all * min(1.0, rows / self.brute_rows)
            self.pr_s = self.pr_s * _DECAY + t_total
            self.br_s = self.br_s * _DECAY + est
            if self.force is None:  # the running sums and this block alike (one slow block weighs in the sums)
                if self.mode == "pruned":
                    other = self.pr_s > _SWITCH_MARGIN * self.br_s and t_total > _SWITCH_MARGIN * est
                else:
                    other = self.br_s > _SWITCH_MARGIN * self.pr_s and est > _SWITCH_MARGIN * t_total
                self.streak = self.streak + 1 if other else 0
                if self.streak >= _SWITCH_STREAK:
                    self.switches.append(self.pos)
                    self.mode = "brute" if self.mode == "pruned" else "pruned"
                    self.streak = 0

    def summary(self) -> dict:
        pairs = sum((e - s) * (self.n - s) for _, s, e in self.units)
        return {
            "pruned_fraction": round(max(0.0, 1.0 - self.survivors / max(1, pairs)), 4),
            "blocks_pruned": self.counts["pruned"],
            "blocks_brute": self.counts["brute"],
            "switches": len(self.switches),
            "chosen": self.mode,
        }


class _Pilot:
    """The gate of :func:`_pruned_symmetric`: whether the pruning can pay, measured on a sample before anything is
    built for it, in two stages so that data where it cannot pay costs the least.

    ``_PILOT_BLOCKS`` pseudo-blocks against ``M = _PILOT_COLS`` random columns (all rows when there are fewer). A
    pseudo-block is a random row and its ``_CLUSTER_SIZE - 1`` nearest rows (what a k-means cluster of the search
    holds); each member's k-th neighbour distance is estimated by its ``k·M/n``-th nearest among the M columns,
    times ``_PILOT_SLACK`` (the search's first bounds U, from the home clusters, lie typically 7–18 % above the k-th
    neighbour distance): the member's *reach*. A column counts as kept by a block's test when its lower bound to some
    member does not exceed that member's reach.

    Stage 1 (here, no principal directions): ``within_reach``, the fraction of columns whose distance itself (float32)
    is within some member's reach. Every projected test keeps at least those columns, at any rank (its lower bound
    never exceeds the distance), so when this fraction is above ``_PILOT_BRUTE`` the pruning cannot pay, whatever
    the projection: the gate decides for the brute force without finding any direction (isotropic or
    high-intrinsic-dimension data: the i.i.d. 784-d Gaussian, the 50-d Gaussian of bench/knn_suite.py).

    Stage 2 (:meth:`kept`, only when stage 1 leaves the pruning a chance): the same test with the embedded
    distance ``|w_m - w_j|`` (:class:`_Prefixes`) at each candidate rank. On ten kinds of data (bench/knn_suite.py)
    its estimate lay within about 0.1 of the kept fraction the search then measured. The gate decides how the search
    runs, never its answer."""

    def __init__(self, eng: _Engine):
        n, k, dev = eng.n, eng.k, eng.device
        self.eng = eng
        g = torch.Generator(device="cpu").manual_seed(1)
        M = min(n, _PILOT_COLS)
        self.cols = torch.arange(n, device=dev) if M == n else torch.randperm(n, generator=g)[:M].to(dev)
        seeds = torch.randperm(n, generator=g)[:_PILOT_BLOCKS].to(dev)
        cs = min(n, _CLUSTER_SIZE)
        buf = eng.scratch64()
        # each seed's cs nearest rows (itself included), from one streaming pass over the data
        S = eng.centred64(seeds, buf)
        s2 = (S * S).sum(1, keepdim=True)
        near_d = torch.full((seeds.numel(), cs), math.inf, dtype=torch.float64, device=dev)
        near_i = torch.zeros((seeds.numel(), cs), dtype=torch.long, device=dev)
        for s, c in eng.chunks64(eng.ref, buf):
            c.sub_(eng.mu)
            d = torch.addmm(s2 + (c * c).sum(1).unsqueeze(0), S, c.T, alpha=-2)
            ids = torch.arange(s, s + c.shape[0], device=dev).expand(seeds.numel(), -1)
            near_d, pos = torch.topk(torch.cat([near_d, d], 1), cs, dim=1, largest=False)
            near_i = torch.gather(torch.cat([near_i, ids], 1), 1, pos)
        self.members = near_i.flatten()
        # float32 from here (an estimate): the members' squared distances to the columns, in one pass over them
        self.A = eng.centred64(self.members, buf).float()
        self.a2 = (self.A * self.A).sum(1)
        kk = min(M - 1, max(1, round(k * M / n)))
        dist = torch.empty(self.members.numel(), M, device=dev)
        for s, c in eng.chunks64(eng.ref, buf, self.cols):
            e = s + c.shape[0]
            c = c.sub_(eng.mu).float()
            dist[:, s:e] = torch.addmm(self.a2.unsqueeze(1) + (c * c).sum(1).unsqueeze(0), self.A, c.T, alpha=-2)
        dist.masked_fill_(self.members.unsqueeze(1) == self.cols.unsqueeze(0), math.inf)  # not its own neighbour
        best = torch.topk(dist, kk, dim=1, largest=False).values
        self.reach = (best[:, -1] * _PILOT_SLACK**2).view(seeds.numel(), cs, 1)
        self.within_reach = self._fraction(dist)
        eng.clock.lap("pilot")

    def _fraction(self, d2: torch.Tensor) -> float:
        """The fraction of columns whose squared (lower-bound) distance ``d2`` (members × columns) to some member of
        its pseudo-block is within that member's reach."""
        blocks, cs, _ = self.reach.shape
        return round(float((d2.view(blocks, cs, -1) <= self.reach).any(1).float().mean()), 4)

    def kept(self, pre: _Prefixes) -> dict[int, float]:
        """Stage 2: per candidate rank of ``pre``, the fraction of columns the projected test of a block would keep."""
        eng, dev = self.eng, self.eng.device
        A, a2, M = self.A, self.a2, self.cols.numel()
        P = pre.P.float()
        ZB = torch.empty(M, P.shape[1], device=dev)
        b2 = torch.empty(M, device=dev)
        for s, c in eng.chunks64(eng.ref, eng.scratch64(), self.cols):
            e = s + c.shape[0]
            c = c.sub_(eng.mu).float()
            b2[s:e] = (c * c).sum(1)
            torch.mm(c, P, out=ZB[s:e])
        ZA = A @ P
        kept = {}
        for r in pre.ranks:
            za, zb = ZA[:, :r], ZB[:, :r]
            za2, zb2 = (za * za).sum(1), (zb * zb).sum(1)
            ra, rb = (a2 - za2).clamp_min(0).sqrt(), (b2 - zb2).clamp_min(0).sqrt()
            # |w_a - w_b|² = |z_a - z_b|² + (rho_a - rho_b)²  =  (|z_a|² + rho_a²) + (|z_b|² + rho_b²) - 2(z_a·z_b + rho_a rho_b)
            wa = torch.cat([za, ra.unsqueeze(1)], 1)
            wb = torch.cat([zb, rb.unsqueeze(1)], 1)
            kept[r] = self._fraction(
                torch.addmm((wa * wa).sum(1, keepdim=True) + (wb * wb).sum(1).unsqueeze(0), wa, wb.T, alpha=-2)
            )
        eng.clock.lap("pilot")
        return kept


def _pruned_symmetric(
    eng: _Engine,
    out_d,
    out_i,
    progress,
    force: str | None = None,
    part: _SymmetricPart | None = None,
    plan: dict | None = None,
) -> None:
    """Step 2 for the full self-query, each unordered pair considered once, in coarse parallel tasks.

    First the gate: unless ``force`` says otherwise, :class:`_Pilot` estimates on a sample how much the projected
    test could prune; when even the best rank would keep more than ``_PILOT_BRUTE`` of the pairs of single rows
    (isotropic or high-dimensional data), nothing is built for the pruning and every block runs by brute force
    (:func:`_symmetric_brute`). When the distances themselves already keep more than that (a lower bound of what
    any rank keeps), not even the principal directions are found.

    Otherwise reference rows are ordered by k-means cluster; every row's ``U_i`` comes first (home clusters). A
    block of rows [s, e) is then compared with the columns [s, n) only: a column j survives when the projected
    bound cannot exclude it for some row i of the block (``d_ij <= U_i``) *or* for j itself (``d_ij <= U_j``);
    the block's certified distances emit candidates in both directions. Pairs with j < s were met when j's
    block was processed. The blocks are independent: whole blocks go to worker threads (:class:`_Workers`), no
    barrier inside a block.

    Each block runs *pruned* (the projected test first, then the GEMM on the surviving columns) or as *brute force*
    (the GEMM on all its columns): the same candidates either way. :class:`_Chooser` picks, block by block, the form
    that costs less as measured on the blocks already done (``force``: always that form).

    ``plan`` (a dict, :func:`plan_parts`): everything up to the blocks runs (projection, k-means, the first bounds U,
    the rank), no block does; the grouping, U (by reference row), the directions at the chosen rank and the rank
    are stored in ``plan``. ``part`` (:func:`kneighbors_part`): those come from the plan instead (no principal
    directions, k-means, home clusters or rank choice of its own), and only the blocks of the part's clusters run.
    A pair {i, j} is met by the block holding the smaller of its two positions, so the parts, each a set of
    clusters, meet every pair exactly once between them; the thresholds U are valid upper bounds of the rows' k-th
    distances over all columns, hence over the columns a part meets, and each part keeps, per row it touches, the
    exact k best among the pairs it met (fewer when it met fewer).
    """
    n, k, dev, stats = eng.n, eng.k, eng.device, eng.stats
    # exact distances inside the block loop with the native kernel (CPU), blocks in parallel; otherwise (CUDA, no
    # native kernel) candidate pairs wait for the exact phase of the engine, one block at a time
    native = _EXACT_IN_BLOCK and dev.type == "cpu" and _native.available() and eng.cdt == torch.float32
    stats["exact_in_block"] = native
    threads = eng.threads if native else 1
    stats["threads"] = threads
    ranks = tuple(sorted({min(r, eng.D) for r in _RANKS}))
    pre = None
    if part is not None:  # the plan's directions and candidate ranks
        pre = _Prefixes(eng, part.ranks, basis=part.basis)
    elif force is None and plan is None:  # the gate (a plan makes the clustered search)
        pilot = _Pilot(eng)
        stats["pilot_within_reach"] = pilot.within_reach
        if pilot.within_reach <= _PILOT_BRUTE:  # else no projection can prune enough: no direction is found
            pre = _Prefixes(eng, ranks)
            stats["pilot_kept"] = pilot.kept(pre)
            if min(stats["pilot_kept"].values()) > _PILOT_BRUTE:
                pre = None
        del pilot
    elif force != "brute" or plan is not None:
        pre = _Prefixes(eng, ranks)
    if pre is None:
        del pre
        release_freed_memory(dev)
        _symmetric_brute(eng, out_d, out_i, progress, native, threads)
        return
    # the embedding at the candidate ranks (one projection; a part: the plan's); k-means groups the rows in the
    # rank-32 embedding
    if part is None or part.bounds is not None:  # (the bounds stage needs no embedding)
        pre.project(None if part is None else part.coords)
    r0 = min(pre.ranks, key=lambda r: abs(r - _KMEANS_RANK))
    if part is None:
        m = max(1, round(n / _CLUSTER_SIZE))
        labels, cent = _kmeans(pre.at(r0)[:, : r0 + 1].to(torch.float32), m, sample=_KMEANS_SAMPLE)
        if plan is not None:
            plan.update(labels=labels.cpu(), clusters=m)
    else:  # the plan's grouping (and its home clusters, or its U)
        m, labels, cent = part.clusters, part.labels.to(dev, torch.long), None
    release_freed_memory(dev)
    eng.clock.lap("kmeans")
    counts = torch.bincount(labels, minlength=m)
    perm = torch.argsort(labels, stable=True)  # permuted position -> reference row
    starts = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), torch.cumsum(counts, 0)]).tolist()
    norm_p, n2_p = eng.norm.index_select(0, perm), eng.n2c.index_select(0, perm)
    cn_p = eng.cnorm.index_select(0, perm)
    if part is None:
        homes = _home_clusters(cent, counts.tolist(), _home_need(k))
    elif part.bounds is None:  # the bounds stage: the plan's home clusters
        ptr, idx = part.homes[0].tolist(), part.homes[1].tolist()
        homes = [idx[ptr[c] : ptr[c + 1]] for c in range(m)]
    else:
        homes = None
    del labels, cent
    # the GEMM frame in permuted order. With the native kernel it is never held whole: each worker builds the rows
    # it needs from the reference (:meth:`_Worker.frame_rows`, the centred float32 rows of float64 input, or float32
    # input's own rows), so nothing the size of the data is allocated beside it. Otherwise a block's rows and a
    # brute-force block's columns are contiguous slices of a permuted copy.
    x_p = None if native else eng.permuted_frame(perm)
    stats["frame_on_the_fly"] = x_p is None
    release_freed_memory(dev)  # k-means' temporaries and the unpermuted projection, before the search's own
    rows_max = max(1, min(eng.rows_for(4 * 4 * n), _ROWS_MAX))
    cols_max = max(256, min(_COLS_MAX, eng.rows_for(4 * (eng.D + 4 * rows_max))))
    # CPU: cache-sized pieces; CUDA: as few launches as the budget allows (a million columns in a few pieces)
    proj_cols = _PROJ_COLS if dev.type == "cpu" else max(_PROJ_COLS, eng.rows_for(8 * rows_max))
    units = []  # row blocks [s, e) in permuted order, each inside one cluster
    for c in range(m):
        for s in range(starts[c], starts[c + 1], rows_max):
            units.append((c, s, min(starts[c + 1], s + rows_max)))
    mine = units  # the blocks this call runs (every U is needed: any row at a position >= s may be a column)
    if part is not None and part.bounds is None:  # the bounds stage: U of the rows of an equal range of positions
        mine = [u for u in units if u[1] * part.count // n == part.index]
        stats["part"] = {"index": part.index, "count": part.count, "rows": sum(e - s for _, s, e in mine)}
    elif part is not None:
        owner = part.owner.tolist()
        mine = [u for u in units if owner[u[0]] == part.index]
        pairs = sum((e - s) * (n - s) for _, s, e in mine)
        stats["part"] = {
            "index": part.index,
            "count": part.count,
            "clusters": sum(o == part.index for o in owner),
            "pair_share": round(pairs / max(1, n * (n - 1) // 2 + n), 4),
        }
    widest = min(rows_max, max((e - s for _, s, e in mine), default=1))
    if dev.type == "cpu":
        proj_cols = max(256, min(proj_cols, _PROJ_PIECE // widest))

    with _Workers(threads, eng, n, k, out_d, out_i, perm) as pool:
        # U for every row from its home clusters (own first, then the nearest centroids); a part has the plan's
        U = torch.empty(n, dtype=torch.float64, device=dev)

        def home(w, unit) -> None:
            c, s, e = unit
            home_cols = torch.cat([torch.arange(starts[c_], starts[c_ + 1], device=dev) for c_ in homes[c]])
            q, xh = w.frame_rows(eng, x_p, s, e, 0, perm), w.frame_take(eng, x_p, home_cols, 1, perm)
            sh = w.sq_dists(q, n2_p[s:e], xh, n2_p.index_select(0, home_cols), None)
            sh.masked_fill_(home_cols.unsqueeze(0) == torch.arange(s, e, device=dev).unsqueeze(1), math.inf)
            kth = torch.topk(sh, k, dim=1, largest=False, sorted=False).values.amax(1).to(torch.float64)
            U[s:e] = eng.bounds.upper(kth, norm_p[s:e] + float(norm_p.index_select(0, home_cols).max()))

        if part is None and (plan is None or plan.get("with_bounds", True)):
            pool.run(iter(units), home)
        elif part is not None and part.bounds is None:
            pool.run(iter(mine), home)
        elif part is not None:
            U = part.bounds.to(dev, torch.float64).index_select(0, perm)
        eng.clock.lap("home")
        if part is not None and part.bounds is None:  # the bounds stage ends here: its rows' U (by reference row)
            pos = torch.cat([torch.arange(s, e, device=dev) for _, s, e in mine] or [perm.new_empty(0)])
            plan.update(rows=perm.index_select(0, pos).cpu(), bounds=U.index_select(0, pos).cpu())
            return
        if plan is not None:  # what the parts need; no rank is chosen and no block runs here
            by_row = None
            if plan.get("with_bounds", True):
                by_row = torch.empty_like(U)
                by_row[perm] = U
            coords = None
            if n * pre.zz.shape[1] * pre.zz.element_size() <= _COORDS_MAX_BYTES:
                coords = (pre.zz.cpu(), pre.a2.cpu(), pre.z2.cpu(), eng.mu.cpu())
            sizes = [len(h) for h in homes]
            plan.update(
                bounds=None if by_row is None else by_row.cpu(),
                basis=pre.P.cpu(),
                ranks=pre.ranks,
                counts=counts.tolist(),
                coords=coords,
                homes=(
                    torch.tensor([0, *itertools.accumulate(sizes)], dtype=torch.long),
                    torch.tensor([c_ for h in homes for c_ in h], dtype=torch.long),
                ),
            )
            return

        def projected(w, zp, thrz, s, e) -> torch.Tensor:
            """Columns (positions >= s, ascending) the projected test keeps for the block [s, e): computed projected
            squared distances G (columns × rows), in pieces of proj_cols columns (a cache-sized block on the CPU).
            Column j survives when some row i of the block may have it among its neighbours (G_ij <= thrz_i) or
            it may have row i among its own (G_ij <= thrz_j); ``thrz``: the thresholds of the positions [s, n).
            Both tests compare G with a threshold rounded up to the GEMM dtype; fl(G - t) <= 0 exactly when G <= t."""
            zu = _query_form(zp[s:e]).T
            thr_rows = thrz[: e - s].unsqueeze(0)
            buf = w.proj_buffer(min(n, proj_cols) * (e - s), zp.dtype)
            if native:  # one pass of tg_proj_keep per piece writes the kept columns (no pass of torch's per test)
                out, m = torch.empty(n - s, dtype=torch.int64, device=dev), 0
                thr_r = thrz[: e - s].contiguous()
                for j0 in range(s, n, proj_cols):
                    j1 = min(n, j0 + proj_cols)
                    G = torch.mm(zp[j0:j1], zu, out=buf[: (j1 - j0) * (e - s)].view(j1 - j0, e - s))
                    m += _native.proj_keep(G, thr_r, thrz[j0 - s : j1 - s], j0, out[m:])
                return out[:m]
            keep = torch.empty(n - s, dtype=torch.bool, device=dev)
            for j0 in range(s, n, proj_cols):
                j1 = min(n, j0 + proj_cols)
                G = torch.mm(zp[j0:j1], zu, out=buf[: (j1 - j0) * (e - s)].view(j1 - j0, e - s))
                mine = torch.amin(G, 1) <= thrz[j0 - s : j1 - s]
                keep[j0 - s : j1 - s] = mine | (torch.amin(G.sub_(thr_rows), 1) <= 0)
            return torch.nonzero(keep).flatten() + s

        # the projection rank, from the data: on a few sample blocks, the columns the projected test keeps at each
        # candidate rank, counted; the cost model (_PROJ_ENTRY) prices the test's entries and the GEMM on the
        # survivors in multiply-adds, and the rank of least total cost wins (more directions prune more columns, but
        # cost more per column). Counts, not timings: the choice depends on the data only, not on the machine's load.
        # The sample comes from all blocks, not only a part's: every part of a split search chooses the rank the
        # unsplit search would (a part choosing from its own few blocks could take another, and run slower).
        big = [u for u in units if u[2] - u[1] >= 8] or units
        sample = (
            [big[int(i)] for i in np.linspace(0, len(big) - 1, min(_RANK_SAMPLES, len(big)))]
            if len(pre.ranks) > 1
            else []
        )
        tested = sum((e - s) * (n - s) for _, s, e in sample)

        def rank_cost(slot: int, r: int, pre: _Prefixes = pre) -> float:
            zr = pre.at(r, perm)
            E_r, kappa_r = pre.constants(r)
            b = _Bounds(E=eng.bounds.E, E_proj=E_r, eta=eng.bounds.eta, kappa_proj=kappa_r)
            thrz_r = _up(b.projected_threshold(U, cn_p + eng.max_cnorm), eng.cdt)
            surv = sum((e - s) * projected(pool.workers[slot], zr, thrz_r[s:], s, e).numel() for _, s, e in sample)
            return (tested * (r + 3 + _PROJ_ENTRY) + surv * eng.D) / max(1, tested)

        # the candidate ranks spread over the workers (largest first: the longest tasks start first)
        tried = sorted(pre.ranks, reverse=True) if sample else []
        costs = dict(sorted(zip(tried, _in_threads(threads, tried, rank_cost), strict=True)))
        rank = min(costs, key=costs.get) if costs else pre.ranks[-1]
        stats["rank"] = rank
        stats["rank_costs"] = {r: round(c, 2) for r, c in costs.items()}
        eng.bounds.E_proj, eng.bounds.kappa_proj = pre.constants(rank)
        z_p = pre.at(rank, perm)
        del pre
        eng.clock.lap("rank")
        thr_c = _up(eng.bounds.candidate_threshold(U, norm_p + eng.max_norm), eng.cdt)
        thrz_up = _up(eng.bounds.projected_threshold(U, cn_p + eng.max_cnorm), eng.cdt)
        N_c = norm_p + eng.max_norm
        if native:
            pool.start_scan(eng, x_p, n2_p, thr_c, N_c, eng.bounds)

        def projected_thresholds(s: int) -> torch.Tensor:
            """The projected test's thresholds of the positions [s, n), from the fused scan's current thresholds when
            it runs. A row's scan threshold t only decreases from thr_c = up((U + eta N)² + E N²) and each value it
            takes is such a bound for a valid U' (the k-th smallest upper bound of k real points' distances), so
            sqrt(t - E N²) - eta N >= U' bounds the row's k-th neighbour distance as U does (float64, its error far
            below the float32 ulp that _up adds); the smaller of it and U gives the threshold. The blocks done so far
            have tightened it for many rows: later blocks keep fewer columns."""
            if not native:
                return thrz_up[s:]
            t, N = pool.thr[s:].to(torch.float64), N_c[s:]
            b = eng.bounds
            U_now = torch.minimum((t - b.E * N * N).clamp_min(0).sqrt() - b.eta * N, U[s:])
            return torch.minimum(_up(b.projected_threshold(U_now, cn_p[s:] + eng.max_cnorm), eng.cdt), thrz_up[s:])

        chooser = _Chooser(mine, n, force)
        total = sum((e - s) * (n - s) for _, s, e in mine)

        def block(w, task) -> None:
            mode, group = task
            s, e = group[0][1], group[-1][2]
            t0 = time.perf_counter()
            cols = None if mode == "brute" else projected(w, z_p, projected_thresholds(s), s, e)
            t1 = time.perf_counter()
            t_gemm, t_kernel, t_cols = _block(eng, w, x_p, n2_p, s, e, cols, cols_max, thr_c, native, perm)
            if not native and eng.n_pairs > _FLUSH_PAIRS:  # bounded memory: flushes merge with the best so far
                eng.flush(eng.ref, torch.arange(n, device=dev), out_d, out_i)
            t2 = time.perf_counter()
            ncols = n - s if cols is None else int(cols.numel())
            chooser.report(mode, group, e - s, n - s, ncols, t1 - t0, t_gemm, t_kernel, t2 - t0, t_cols)
            w.clock("projected", t1 - t0)

        pool.run(chooser, block, progress=lambda: progress(0.95 * chooser.seen / max(1, total), "knn"))
    _symmetric_done(eng, pool, chooser, native, out_d, out_i)


def _block(eng: _Engine, w: _Worker, x_p, n2_p, s: int, e: int, cols, cols_max: int, thr_c, native: bool, perm):
    """One block of the symmetric search: its rows [s, e) (positions) against the columns ``cols`` (ascending
    positions >= s, ``cols_max`` per GEMM piece), or against all of [s, n) when ``cols`` is None (brute force,
    pieces of ``_BLOCK_ENTRIES`` products, at most ``cols_max`` columns when they are built), a GEMM piece at a
    time, the GEMM frame ``x_p`` (None: built on the fly, :meth:`_Worker.frame_rows`); each piece's products go
    through the fused scan (native) or the torch threshold tests and the engine's pending pairs. Returns the seconds of its GEMMs and of its candidate passes (the gather of surviving columns is in
    neither: a brute-force block has none)."""
    n, dev = eng.n, eng.device
    q = w.frame_rows(eng, x_p, s, e, 0, perm)
    qn2 = n2_p[s:e]
    rpos = torch.arange(s, e, device=dev)
    ncols = n - s if cols is None else int(cols.numel())
    step = cols_max
    if cols is None:  # a cache-sized block of products; built columns also bound the worker's buffer
        step = max(128, _BLOCK_ENTRIES // (e - s))
        step = step if x_p is not None else min(step, max(128, cols_max))
    t_gemm = t_kernel = t_cols = 0.0
    for c0 in range(0, ncols, step):
        if cols is None:
            c1 = min(ncols, c0 + step)
            cc_ = torch.arange(s + c0, s + c1, device=dev)
            tc = time.perf_counter()
            xg = w.frame_rows(eng, x_p, s + c0, s + c1, 1, perm)
            t_cols += time.perf_counter() - tc
            cn2 = n2_p[s + c0 : s + c1]
            nb = max(0, min(e, s + c1) - (s + c0))
        else:
            cc_ = cols[c0 : c0 + step]
            tc = time.perf_counter()
            xg, cn2 = w.frame_take(eng, x_p, cc_, 1, perm), n2_p.index_select(0, cc_)
            t_cols += time.perf_counter() - tc
            nb = int((cc_ < e).sum())
        # the other direction (column j as the query, row i as its candidate) counts for columns outside the
        # block only: an in-block pair {i, j} already met both directions as the entries (i, j) and (j, i), so no
        # pair is ever queued twice (the columns are ascending: the in-block ones, nb of them, a prefix)
        ta = time.perf_counter()
        if native:
            # one GEMM, then one pass of the native kernel: certified values, the threshold tests of both
            # directions, each row's k smallest values seen (tightening its threshold), the candidates queued
            dot = w.products(q, xg)
            tb = time.perf_counter()
            w.scan(dot, nb, qn2, cn2, rpos, cc_)
        else:
            sq = torch.addmm(cn2.unsqueeze(0), q, xg.T, beta=1, alpha=-2)
            sq += qn2.unsqueeze(1)
            sq[cc_[:nb] - s, torch.arange(nb, device=dev)] = math.inf  # self
            tb = time.perf_counter()
            ids_r, ids_c = perm[s:e], perm.index_select(0, cc_)
            rr, cc = torch.nonzero(sq <= thr_c[s:e].unsqueeze(1), as_tuple=True)
            eng.add(ids_r.index_select(0, rr), ids_c.index_select(0, cc), sq[rr, cc])
            if nb < cc_.numel():
                out = sq[:, nb:]
                rr, cc = torch.nonzero(out <= thr_c.index_select(0, cc_[nb:]).unsqueeze(0), as_tuple=True)
                eng.add(ids_c.index_select(0, cc + nb), ids_r.index_select(0, rr), out[rr, cc])
        t_gemm += tb - ta
        t_kernel += time.perf_counter() - tb
    w.clock("gemm", t_gemm)
    w.clock("topk", t_kernel)
    return t_gemm, t_kernel, t_cols


def _symmetric_brute(eng: _Engine, out_d, out_i, progress, native: bool, threads: int) -> None:
    """The symmetric search with every block by brute force: rows in their own order (no projection, k-means or
    permutation; float32 input is used in place), block [s, e) against the columns [s, n) through the fused scan,
    every row's threshold starting at +inf and tightening as its k smallest certified values come in. Without the
    native kernel (CUDA), the engine's plain brute force (a GEMM and a top-k per row block) instead."""
    n, k, dev, stats = eng.n, eng.k, eng.device, eng.stats
    if not native:
        if eng.x is None:
            eng.x = eng.permuted_frame(None)
        eng.qnorm = eng.norm
        eng.brute(eng.x, eng.norm, eng.ref, torch.arange(n, device=dev), out_d, out_i, progress)
        stats.update({"pruned_fraction": 0.0, "blocks_pruned": 0, "blocks_brute": 0, "switches": 0, "chosen": "brute"})
        return
    # float64 input (or float32 far from the origin): the centred float32 frame is built a piece at a time inside
    # the blocks, never whole; its rows are converted (n - s) / rows times over, so the blocks are tall
    stats["frame_on_the_fly"] = eng.x is None
    rows = min(_BRUTE_TASK_ROWS, max(32, n // 16))
    units = [(0, s, min(n, s + rows)) for s in range(0, n, rows)]
    chooser = _Chooser(units, n, "brute")
    total = sum((e - s) * (n - s) for _, s, e in units)
    thr = torch.full((n,), math.inf, dtype=torch.float32, device=dev)
    with _Workers(threads, eng, n, k, out_d, out_i) as pool:
        pool.start_scan(eng, eng.x, eng.n2c, thr, eng.norm + eng.max_norm, eng.bounds)

        def block(w, task) -> None:
            _, group = task
            s, e = group[0][1], group[-1][2]
            t_gemm, t_kernel, _ = _block(eng, w, eng.x, eng.n2c, s, e, None, _COLS_MAX, thr, True, None)
            chooser.report("brute", group, e - s, n - s, n - s, 0.0, t_gemm, t_kernel, t_gemm + t_kernel, 0.0)

        pool.run(chooser, block, progress=lambda: progress(0.95 * chooser.seen / max(1, total), "knn"))
    _symmetric_done(eng, pool, chooser, native, out_d, out_i)


def _symmetric_done(eng: _Engine, pool: _Workers, chooser: _Chooser, native: bool, out_d, out_i) -> None:
    """After the blocks of the symmetric search: the pending pairs' exact phase (without the native kernel) and
    the search's statistics."""
    if not native:
        eng.flush(eng.ref, torch.arange(eng.n, device=eng.device), out_d, out_i)
    eng.examined += pool.examined
    eng.stats["queued_mean"] = round(pool.queued / max(1, eng.n), 3)
    eng.stats["fallback_rows"] = pool.fallback_rows
    for name, sec in pool.seconds.items():
        eng.clock.acc[name] = round(eng.clock.acc.get(name, 0.0) + sec, 4)
    eng.clock.t = time.perf_counter()
    eng.stats.update(chooser.summary())


def _pruned(eng: _Engine, q, qnorm, qcnorm, q_rows, self_idx, out_d, out_i, progress, fallback: bool = True) -> None:
    """Step 2 of the module docstring: exact pruning with principal-direction projections (anchors or
    separate queries; the full self-query uses :func:`_pruned_symmetric`). ``q``/``qnorm``: queries in the
    GEMM frame; ``qcnorm``: their norms about the reference mean (the projection's frame)."""
    n, k, dev, stats = eng.n, eng.k, eng.device, eng.stats
    nq = q.shape[0]
    pj = _projection(eng, q_rows, self_idx)
    r, z, zq, labels, cent = pj.r, pj.z, pj.zq, pj.labels, pj.cent
    m = cent.shape[0]
    counts = torch.bincount(labels, minlength=m)
    members = torch.argsort(labels, stable=True)
    starts = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), torch.cumsum(counts, 0)]).tolist()
    counts_l = counts.tolist()
    if self_idx is not None:
        q_labels = labels.index_select(0, self_idx)
    else:
        c2 = (cent * cent).sum(1)
        q_labels = torch.addmm(c2.unsqueeze(0), zq[:, :r].to(torch.float32), cent.T, alpha=-2).argmin(1)
    q_order = torch.argsort(q_labels, stable=True)
    q_counts = torch.bincount(q_labels, minlength=m).tolist()
    home_need = _home_need(k)
    homes = _home_clusters(cent, counts_l, home_need)
    rows_max = max(1, min(eng.rows_for(4 * 3 * n + 64 * (k + _TOPK_MARGIN)), _ROWS_MAX))
    _no_neighbours_yet(out_d, out_i)
    done = survivors = 0
    brute_mode = False
    pos = 0
    for c in range(m):
        cnt = q_counts[c]
        if cnt == 0:
            continue
        group_all = q_order[pos : pos + cnt]
        pos += cnt
        for s in range(0, cnt, rows_max):
            g = group_all[s : s + rows_max]
            if brute_mode:
                eng.brute_rows(g, q, qnorm, self_idx)
                survivors += g.shape[0] * n
            else:
                gn = qnorm.index_select(0, g)
                gq, gn2 = q.index_select(0, g), (gn * gn).to(eng.cdt)
                sidx = self_idx.index_select(0, g) if self_idx is not None else None
                # upper bound U from the home clusters: own cluster first, then the nearest ones
                home_cols = torch.cat([members[starts[c_] : starts[c_ + 1]] for c_ in homes[c]])
                sh = eng.sq_dists(gq, gn2, home_cols)
                if sidx is not None:
                    sh.masked_fill_(home_cols.unsqueeze(0) == sidx.unsqueeze(1), math.inf)
                kth = torch.topk(sh, k, dim=1, largest=False, sorted=False).values.amax(1).to(torch.float64)
                U = eng.bounds.upper(kth, gn + float(eng.norm.index_select(0, home_cols).max()))
                eng.clock.lap("home")
                # projected lower bounds on every column, the row threshold folded in: keep columns <= 0
                thr_z = eng.bounds.projected_threshold(U, qcnorm.index_select(0, g) + eng.max_cnorm)
                zf = _query_form(zq.index_select(0, g), shift=thr_z)
                cols = torch.nonzero((zf @ z.T).amin(0) <= 0).flatten()
                survivors += int(cols.numel()) * g.shape[0]
                eng.clock.lap("projected")
                # columns outside a row's own survivors stay: they are provably farther than U_i, so they can
                # only enlarge that row's candidate set, never change its answer
                sq = eng.sq_dists(gq, gn2, cols)
                if sidx is not None:
                    at = torch.searchsorted(cols, sidx).clamp_max(cols.numel() - 1)
                    hit = cols.index_select(0, at) == sidx
                    sq[torch.nonzero(hit).flatten(), at[hit]] = math.inf
                eng.candidates(sq, gn + float(eng.norm.index_select(0, cols).max()), cols, g)
            eng.maybe_flush(q_rows, self_idx, out_d, out_i)
            done += g.shape[0]
            progress(done / nq * 0.95, "knn")
            # graceful fallback: when most columns survive, the projection only adds work
            if (
                fallback
                and not brute_mode
                and done >= max(_FALLBACK_AFTER, nq // 20)
                and survivors > _FALLBACK_SURVIVORS * done * n
            ):
                brute_mode = True
                stats["fallback_after"] = done
    eng.flush(q_rows, self_idx, out_d, out_i)
    stats["pruned_fraction"] = round(1.0 - survivors / max(1, nq * n), 4)


def kneighbors(
    reference: torch.Tensor,
    k: int,
    *,
    queries: torch.Tensor | None = None,
    query_index: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    memory_budget_mb: int = 1024,
    progress: ProgressFn = no_progress,
    method: str = "auto",
) -> KNNResult:
    """Exact k nearest neighbours in float64 Euclidean distance (module docstring; docs/methods.md §0, §1.1, §7).

    * ``queries`` and ``query_index`` both None: every row of ``reference`` is a query; self excluded by index
      (an exact duplicate of a query is *not* itself: it is a neighbour at distance 0).
    * ``query_index`` given (anchor subset, docs/methods.md §1.1): those rows are queried against the full set,
      self excluded by index.
    * ``queries`` given (a separate point set): no exclusion.

    Distances are ``sqrt(sum((x_q - x_j)**2))`` in float64, ascending; equal distances are ordered by the smaller
    reference index. ``memory_budget_mb`` bounds the working buffers (beyond the inputs and, except in the full
    self-query on the CPU, a centred float32 copy of float64 ``reference``); ``progress(fraction, "knn")`` is called
    after each chunk of queries. ``method``: "auto" (default) lets the engine choose between the pruned search and
    the brute force from costs it measures during the search (and, for a self-query of low-dimensional data, a k-d
    tree that proposes the candidates, :mod:`estimators.knn.tree`); "pruned" or "brute" force one (large inputs only;
    small ones always use the brute force). The answer never depends on it.

    >>> X = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    >>> r = kneighbors(X, 2)
    >>> r.indices.tolist(), r.distances.tolist()
    ([[1, 2], [0, 2], [3, 1], [2, 1]], [[1.0, 3.0], [1.0, 2.0], [1.0, 2.0], [1.0, 3.0]])
    """
    if method not in _METHODS:
        raise EstimatorError(f"kneighbors: method must be one of {', '.join(_METHODS)}, got {method!r}")
    reference = _as_matrix(reference, "reference")
    n, D = reference.shape
    if queries is not None and query_index is not None:
        raise EstimatorError(
            "kneighbors: give either queries (a separate point set) or query_index (rows of reference), not both"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise EstimatorError(f"kneighbors: k must be a positive integer, got {k!r}")
    k = int(k)
    self_query = queries is None
    need = n - 1 if self_query else n
    if k < 1 or k > need:
        raise EstimatorError(
            f"kneighbors: k={k} neighbours requested but only {max(need, 0)} candidate points exist "
            f"({n} reference rows{', the query itself excluded' if self_query else ''}); use 1 <= k <= {max(need, 0)} "
            "or add data"
        )
    if memory_budget_mb is None or memory_budget_mb <= 0:
        raise EstimatorError(f"kneighbors: memory_budget_mb must be positive, got {memory_budget_mb!r}")
    if isinstance(device, str):
        from estimators.device import resolve_device

        device = resolve_device(device)
    dev = torch.device(device)
    ref = reference.to(dev)
    if self_query:
        if query_index is None:
            qi = torch.arange(n, device=dev)
        else:
            qi = torch.as_tensor(query_index)
            if qi.dim() != 1 or qi.is_floating_point() or qi.dtype == torch.bool:
                raise EstimatorError("kneighbors: query_index must be a 1-D integer tensor of reference rows")
            qi = qi.to(dev, torch.long)
            if qi.numel() and (int(qi.min()) < 0 or int(qi.max()) >= n):
                raise EstimatorError(f"kneighbors: query_index values must lie in [0, {n - 1}]")
        q_rows = ref if query_index is None else ref.index_select(0, qi)  # no copy for the full self-query
    else:
        queries = _as_matrix(queries, "queries")
        if queries.shape[1] != D:
            raise EstimatorError(f"kneighbors: queries have {queries.shape[1]} features but reference has {D}")
        qi = None
        q_rows = queries.to(dev)
    if self_query:  # a table computed elsewhere for this very data (estimators.knn.known)
        hit = _known.lookup(reference, k, None if query_index is None else qi)
        if hit is not None:
            return KNNResult(
                distances=hit[0],
                indices=hit[1],
                query_index=None if query_index is None else qi.cpu(),
                stats={"method": "known", "pruned_fraction": 0.0},
            )
    nq = q_rows.shape[0]
    stats: dict = {"method": "brute", "pruned_fraction": 0.0}
    if self_query and nq and _tree.eligible(n, D, dev, method, _PRUNE_MIN_DIM):  # low-dimensional data: a k-d tree
        found = _tree.search(
            ref,
            k,
            qi,
            query_index is None,
            threads=torch.get_num_threads(),
            memory_budget_mb=memory_budget_mb,
            stats=stats,
            progress=progress,
        )
        if found is not None:
            stats["method"] = "tree"
            return KNNResult(
                distances=found[0], indices=found[1], query_index=None if query_index is None else qi.cpu(), stats=stats
            )
    # allocated here, filled by the search just before its first merge (pages not yet written are not resident:
    # the projection and k-means run without them)
    out_d = torch.empty((nq, k), dtype=torch.float64, device=dev)
    out_i = torch.empty((nq, k), dtype=_id_dtype(n), device=dev)  # int64 in the result
    if nq:
        prune = nq * n >= _PRUNE_MIN_PAIRS and n >= _PRUNE_MIN_REF and D >= _PRUNE_MIN_DIM
        symmetric = prune and self_query and query_index is None
        threads = torch.get_num_threads()
        # the symmetric search runs every step in one thread per worker: its preparation (norms, projection,
        # k-means) with one intra-op thread (small pieces, which a competing process would otherwise stall at
        # every barrier), its blocks in `threads` workers (_Workers)
        single = symmetric and dev.type == "cpu" and threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            _search(
                ref,
                k,
                dev,
                memory_budget_mb,
                stats,
                prune,
                symmetric,
                method,
                threads,
                qi,
                q_rows,
                self_query,
                out_d,
                out_i,
                progress,
            )
        finally:
            if single:
                torch.set_num_threads(threads)
        release_freed_memory(dev)
    return KNNResult(
        distances=out_d.cpu(), indices=out_i.cpu().long(), query_index=None if qi is None else qi.cpu(), stats=stats
    )


@dataclass(frozen=True, eq=False)
class KNNPlan:
    """How :func:`kneighbors_part` splits the full self-query of one reference (``n`` rows) into ``parts`` parts
    (:func:`plan_parts`).

    ``labels`` (int64, one per row) and ``clusters``: the k-means grouping of the pruned symmetric search (large
    inputs), with what the search computes once before its blocks: ``basis`` (float64, D × r: the principal
    directions), ``ranks`` (the candidate projection ranks, ascending, the last r; each part chooses among them on
    its own blocks), ``bounds`` (float64, one per row: its first upper bound U of the k-th neighbour distance, from
    its home clusters; None until the bounds stage has run, :meth:`with_bounds`), ``homes`` (each cluster's home
    clusters, CSR: ``ptr`` (clusters + 1) and ``idx``; what :func:`bounds_part` needs), and ``coords``: every row's
    embedding as the search computes it from ``basis`` (:class:`_Prefixes`: the coordinates ``(x - mu)·basis`` in
    the GEMM dtype, ``|x - mu|²`` and, per rank, the coordinates' squared norm in float64, and ``mu``), so that a
    part loads them instead of projecting every row again (None, or another GEMM dtype or mean than the part's: the
    part projects; n × r values, 36 MB for 70,000 rows at r = 128). ``owner`` (one per cluster): the part that runs
    the cluster's blocks, each block against the columns after it, so that the parts meet every unordered pair once
    between them; interleaved clusters with about equal shares of the pairs (:func:`_part_owners`). ``labels``
    None: the search is the brute force (small or low-dimensional inputs, where every pair is computed from both
    sides anyway), and part p is the block of consecutive query rows ``[p·n // parts, (p + 1)·n // parts)`` against
    all rows. Every part must use the same plan (a worker stores it once: :meth:`arrays`)."""

    n: int
    parts: int
    labels: torch.Tensor | None = None
    clusters: int = 0
    bounds: torch.Tensor | None = None
    basis: torch.Tensor | None = None
    owner: torch.Tensor | None = None
    coords: tuple[torch.Tensor, ...] | None = None
    ranks: tuple[int, ...] = ()
    homes: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def needs_bounds(self) -> bool:
        """A grouping without its bounds: :func:`bounds_part` of every part, then :meth:`with_bounds`."""
        return self.labels is not None and self.bounds is None

    def with_bounds(self, found: list[KNNBounds]) -> KNNPlan:
        """This plan with the bounds of every row, from the :func:`bounds_part` results of all its parts (in any
        order; a part given twice changes nothing). ValueError when a row has no bound or two different ones."""
        if not self.needs_bounds:
            raise ValueError("with_bounds: this plan needs no bounds")
        U = torch.full((self.n,), math.nan, dtype=torch.float64)
        for b in found:
            if b.rows.numel() and (int(b.rows.min()) < 0 or int(b.rows.max()) >= self.n):
                raise ValueError(f"with_bounds: rows outside [0, {self.n})")
            seen = U.index_select(0, b.rows)
            clash = ~torch.isnan(seen) & (seen != b.values)
            if bool(clash.any()):
                raise ValueError("with_bounds: a row has two different bounds (parts of different plans)")
            U[b.rows] = b.values
        # NaN fails: a missing row; a negative value is no bound (+inf is one: no pruning for that row)
        if not bool((U >= 0).all()):
            raise ValueError(
                f"with_bounds: {int((~(U >= 0)).sum())} of {self.n} rows have no bound (a part is missing)"
            )
        return dataclasses.replace(self, bounds=U)

    def arrays(self) -> dict[str, np.ndarray]:
        """The plan as plain arrays (for ``numpy.savez``; never pickled)."""
        out = {"n": np.asarray(self.n, np.int64), "parts": np.asarray(self.parts, np.int64)}
        if self.labels is not None:
            out["labels"] = self.labels.cpu().numpy().astype(np.int32 if self.clusters < 2**31 else np.int64)
            out["clusters"] = np.asarray(self.clusters, np.int64)
            out["basis"] = self.basis.cpu().numpy().astype(np.float64)
            out["ranks"] = np.asarray(self.ranks, np.int64)
            out["owner"] = self.owner.cpu().numpy().astype(np.int32)
            if self.bounds is not None:
                out["bounds"] = self.bounds.cpu().numpy().astype(np.float64)
            if self.homes is not None:
                out["home_ptr"], out["home_idx"] = (t.cpu().numpy().astype(np.int64) for t in self.homes)
        if self.coords is not None:
            for name, t in zip(_COORDS, self.coords, strict=True):
                out[name] = t.cpu().numpy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> KNNPlan:
        """The plan of :meth:`arrays`, checked (ValueError when inconsistent)."""
        n, parts = int(arrays["n"]), int(arrays["parts"])
        if n < 2 or parts < 1:
            raise ValueError(f"not a kNN plan: n={n}, parts={parts}")
        if "labels" not in arrays:
            return cls(n=n, parts=parts)
        if any(name not in arrays for name in ("basis", "ranks", "owner")) or (
            "bounds" not in arrays and "home_ptr" not in arrays
        ):
            raise ValueError("not a kNN plan: a grouping without its basis, ranks, owners and bounds or homes")
        labels = torch.from_numpy(np.asarray(arrays["labels"]).astype(np.int64))
        clusters = int(arrays["clusters"])
        if labels.shape != (n,) or clusters < 1 or int(labels.min()) < 0 or int(labels.max()) >= clusters:
            raise ValueError(f"not a kNN plan: labels of shape {tuple(labels.shape)} for n={n}, {clusters} clusters")
        basis = np.asarray(arrays["basis"])
        owner = np.asarray(arrays["owner"])
        ranks = tuple(int(r) for r in np.asarray(arrays["ranks"]).reshape(-1))
        if basis.ndim != 2 or basis.dtype != np.float64 or min(basis.shape) < 1 or not np.isfinite(basis).all():
            raise ValueError(f"not a kNN plan: a basis of shape {basis.shape} ({basis.dtype})")
        if not ranks or list(ranks) != sorted(set(ranks)) or ranks[0] < 1 or ranks[-1] != basis.shape[1]:
            raise ValueError(f"not a kNN plan: ranks {ranks} for a basis of {basis.shape[1]} directions")
        if owner.shape != (clusters,) or owner.dtype.kind != "i" or int(owner.min()) < 0 or int(owner.max()) >= parts:
            raise ValueError(f"not a kNN plan: owners of shape {owner.shape} for {clusters} clusters, {parts} parts")
        bounds = None
        if "bounds" in arrays:
            b = np.asarray(arrays["bounds"])
            # bounds >= 0 also refuses NaN (+inf is a valid bound: no pruning for that row)
            if b.shape != (n,) or b.dtype != np.float64 or not bool((b >= 0).all()):
                raise ValueError(f"not a kNN plan: bounds of shape {b.shape} ({b.dtype}) for n={n}")
            bounds = torch.from_numpy(b)
        homes = None
        if "home_ptr" in arrays:
            ptr, idx = np.asarray(arrays["home_ptr"]), np.asarray(arrays.get("home_idx", np.zeros(0, np.int64)))
            if (
                ptr.shape != (clusters + 1,)
                or ptr.dtype.kind != "i"
                or idx.ndim != 1
                or idx.dtype.kind != "i"
                or int(ptr[0]) != 0
                or int(ptr[-1]) != idx.shape[0]
                or bool((np.diff(ptr) < 1).any())
                or (idx.size and (int(idx.min()) < 0 or int(idx.max()) >= clusters))
            ):
                raise ValueError(f"not a kNN plan: home clusters {ptr.shape} / {idx.shape} for {clusters} clusters")
            homes = (torch.from_numpy(ptr.astype(np.int64)), torch.from_numpy(idx.astype(np.int64)))
        coords = None
        if any(name in arrays for name in _COORDS):
            zz, a2, z2, mu = (np.asarray(arrays.get(name)) for name in _COORDS)
            if (
                zz.shape != (n, basis.shape[1])
                or zz.dtype not in (np.float32, np.float64)
                or (a2.shape, z2.shape, mu.shape) != ((n,), (n, len(ranks)), (basis.shape[0],))
                or {a2.dtype, z2.dtype, mu.dtype} != {np.dtype(np.float64)}
                or not all(np.isfinite(a).all() for a in (zz, a2, z2, mu))
                or not bool((a2 >= 0).all() and (z2 >= 0).all())
            ):
                raise ValueError(f"not a kNN plan: coordinates of shape {zz.shape} ({zz.dtype}) for n={n}")
            coords = tuple(torch.from_numpy(a) for a in (zz, a2, z2, mu))
        return cls(
            n=n,
            parts=parts,
            labels=labels,
            clusters=clusters,
            bounds=bounds,
            basis=torch.from_numpy(basis),
            owner=torch.from_numpy(owner.astype(np.int64)),
            coords=coords,
            ranks=ranks,
            homes=homes,
        )


@dataclass
class KNNBounds:
    """What one part of the bounds stage found (:func:`bounds_part`): the first upper bound U of the k-th neighbour
    distance of each row in ``rows`` (int64 reference rows) as ``values`` (float64). :meth:`KNNPlan.with_bounds`
    puts all parts' together."""

    rows: torch.Tensor
    values: torch.Tensor
    stats: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """The bounds as plain arrays (for ``numpy.savez``; never pickled)."""
        return {"rows": self.rows.numpy(), "bounds": self.values.numpy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> KNNBounds:
        rows, values = np.asarray(arrays["rows"]), np.asarray(arrays["bounds"])
        if rows.ndim != 1 or rows.shape != values.shape or rows.dtype.kind != "i" or values.dtype != np.float64:
            raise ValueError(f"not kNN bounds: rows {rows.shape} {rows.dtype}, bounds {values.shape} {values.dtype}")
        return cls(rows=torch.from_numpy(rows.astype(np.int64)), values=torch.from_numpy(values))


@dataclass
class KNNPart:
    """The partial answer of one part (:func:`kneighbors_part`): for each row in ``rows`` (int64, ascending), the
    exact k best among the pairs this part met, ascending by (distance, index), padded with (+inf, -1) where it
    met fewer. :func:`merge_parts` turns all parts of a plan into the exact kNN."""

    rows: torch.Tensor
    distances: torch.Tensor
    indices: torch.Tensor
    stats: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """The part as plain arrays (for ``numpy.savez``; never pickled)."""
        return {"rows": self.rows.numpy(), "distances": self.distances.numpy(), "indices": self.indices.numpy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> KNNPart:
        rows, d, i = (np.asarray(arrays[name]) for name in ("rows", "distances", "indices"))
        if (
            rows.ndim != 1
            or d.ndim != 2
            or d.shape != i.shape
            or d.shape[0] != rows.shape[0]
            or d.dtype != np.float64
            or i.dtype.kind != "i"
            or rows.dtype.kind != "i"
        ):
            raise ValueError(f"not a kNN part: rows {rows.shape}, distances {d.shape} {d.dtype}, indices {i.shape}")
        return cls(
            rows=torch.from_numpy(rows.astype(np.int64)),
            distances=torch.from_numpy(d),
            indices=torch.from_numpy(i.astype(np.int64)),
        )


def _self_query_args(reference, k, memory_budget_mb, device, who: str) -> tuple[torch.Tensor, int, torch.device]:
    """The checks :func:`kneighbors` makes on a full self-query's arguments, for the split search."""
    reference = _as_matrix(reference, "reference")
    n = reference.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= n - 1:
        raise EstimatorError(
            f"{who}: k must be an integer in [1, {max(n - 1, 0)}] ({n} rows, self excluded), got {k!r}"
        )
    if memory_budget_mb is None or memory_budget_mb <= 0:
        raise EstimatorError(f"{who}: memory_budget_mb must be positive, got {memory_budget_mb!r}")
    if isinstance(device, str):
        from estimators.device import resolve_device

        device = resolve_device(device)
    return reference, int(k), torch.device(device)


def plan_parts(
    reference: torch.Tensor,
    k: int,
    parts: int,
    *,
    device: torch.device | str = "cpu",
    memory_budget_mb: int = 1024,
    bounds: bool = True,
) -> KNNPlan:
    """The plan that splits ``kneighbors(reference, k)`` (the full self-query) into ``parts`` parts that can run
    on different machines (:func:`kneighbors_part`), merged exactly by :func:`merge_parts`.

    For inputs the full self-query would search with the pruned symmetric search, this is what that search
    computes before its blocks (:func:`_pruned_symmetric`: the projection, k-means, every row's first bound U from
    its home clusters), once, so that every part uses the same and none repeats it, and which part runs which
    clusters; otherwise a plan of row blocks (nothing to compute). ``bounds=False`` leaves the bounds U, the largest
    piece of the plan, to a stage of their own that the machines share: :func:`bounds_part` of each part, then
    :meth:`KNNPlan.with_bounds`. The answer never depends on the plan, only how fast the parts run.

    >>> X = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    >>> plan = plan_parts(X, 2, 2)
    >>> merged = merge_parts([kneighbors_part(X, 2, plan, p) for p in range(2)], 4, 2)
    >>> torch.equal(merged.indices, kneighbors(X, 2).indices)
    True
    """
    reference, k, dev = _self_query_args(reference, k, memory_budget_mb, device, "plan_parts")
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or parts < 1:
        raise EstimatorError(f"plan_parts: parts must be a positive integer, got {parts!r}")
    n, D = reference.shape
    if not (n * n >= _PRUNE_MIN_PAIRS and n >= _PRUNE_MIN_REF and D >= _PRUNE_MIN_DIM):
        return KNNPlan(n=n, parts=int(parts))
    out: dict = {"with_bounds": bool(bounds)}
    _symmetric_call(reference, k, dev, memory_budget_mb, {}, plan=out)
    return KNNPlan(
        n=n,
        parts=int(parts),
        labels=out["labels"],
        clusters=out["clusters"],
        bounds=out["bounds"],
        basis=out["basis"],
        owner=torch.tensor(_part_owners(out["counts"], int(parts)), dtype=torch.long),
        coords=out["coords"],
        ranks=tuple(out["ranks"]),
        homes=None if bounds else out["homes"],  # (what the bounds stage needs)
    )


def _symmetric_call(reference, k, dev, memory_budget_mb, stats, *, plan=None, part=None, out=None, **kw) -> None:
    """:func:`_pruned_symmetric` of the full self-query of ``reference`` as :func:`kneighbors` runs it on the CPU:
    one torch thread per worker (the engine's threads are its workers), freed memory returned at the end."""
    n = reference.shape[0]
    threads = torch.get_num_threads()
    single = dev.type == "cpu" and threads > 1
    if single:
        torch.set_num_threads(1)
    try:
        eng = _Engine(reference.to(dev), k, dev, int(memory_budget_mb) * 2**20, stats, defer_frame=True)
        eng.threads = threads
        stats["gemm_dtype"] = str(eng.cdt).replace("torch.", "")
        stats["exact_kernel"] = "native" if dev.type == "cpu" and _native.available() else "torch"
        if out is None:  # a stage that runs no block: scratch lists
            out = (torch.empty((n, k), dtype=torch.float64, device=dev), torch.empty((n, k), dtype=_id_dtype(n)))
        out_d, out_i = out
        _pruned_symmetric(eng, out_d, out_i, kw.pop("progress", no_progress), plan=plan, part=part, **kw)
        if part is not None and part.bounds is not None:
            stats["candidates_mean"] = round(eng.examined / n, 3)
        del eng
    finally:
        if single:
            torch.set_num_threads(threads)
    release_freed_memory(dev)


def _part_args(reference, k, plan: KNNPlan, part, memory_budget_mb, device, who: str):
    reference, k, dev = _self_query_args(reference, k, memory_budget_mb, device, who)
    n = reference.shape[0]
    if plan.n != n:
        raise EstimatorError(f"{who}: the plan is for {plan.n} rows, the reference has {n}")
    if plan.basis is not None and plan.basis.shape[0] != reference.shape[1]:
        raise EstimatorError(
            f"{who}: the plan is for {plan.basis.shape[0]} features, the reference has {reference.shape[1]}"
        )
    if isinstance(part, bool) or not isinstance(part, (int, np.integer)) or not 0 <= part < plan.parts:
        raise EstimatorError(f"{who}: part must be an integer in [0, {plan.parts - 1}], got {part!r}")
    return reference, k, dev


def _symmetric_part(plan: KNNPlan, part: int) -> _SymmetricPart:
    return _SymmetricPart(
        labels=plan.labels,
        clusters=plan.clusters,
        bounds=plan.bounds,
        basis=plan.basis,
        owner=plan.owner,
        index=int(part),
        count=plan.parts,
        ranks=plan.ranks,
        coords=plan.coords,
        homes=plan.homes,
    )


def bounds_part(
    reference: torch.Tensor,
    k: int,
    plan: KNNPlan,
    part: int,
    *,
    device: torch.device | str = "cpu",
    memory_budget_mb: int = 1024,
) -> KNNBounds:
    """Part ``part`` of the bounds stage of a plan made with ``plan_parts(..., bounds=False)``: the first upper bound
    U of every row in the part's share of the positions (an equal range in the plan's cluster order), each the k-th
    smallest exact distance to the members of its home clusters (as the unsplit search computes it). The parts'
    results, in any order, complete the plan (:meth:`KNNPlan.with_bounds`)."""
    reference, k, dev = _part_args(reference, k, plan, part, memory_budget_mb, device, "bounds_part")
    if not plan.needs_bounds or plan.homes is None:
        raise EstimatorError("bounds_part: the plan needs no bounds (made with bounds=True, or without a grouping)")
    out: dict = {}
    stats: dict = {"method": "bounds-part"}
    _symmetric_call(reference, k, dev, memory_budget_mb, stats, plan=out, part=_symmetric_part(plan, part))
    return KNNBounds(out["rows"], out["bounds"].to(torch.float64), stats)


def kneighbors_part(
    reference: torch.Tensor,
    k: int,
    plan: KNNPlan,
    part: int,
    *,
    device: torch.device | str = "cpu",
    memory_budget_mb: int = 1024,
    progress: ProgressFn = no_progress,
    method: str = "auto",
) -> KNNPart:
    """Part ``part`` of the full self-query ``kneighbors(reference, k)`` split by ``plan`` (:func:`plan_parts`):
    the rows it touched with, for each, the exact k best among the pairs it met (:class:`KNNPart`). The parts of
    one plan meet every pair once between them; :func:`merge_parts` of all of them equals ``kneighbors(reference,
    k)``, distances bit for bit (the same float64 kernel computes each pair's distance). Parts are independent:
    run them anywhere, in any order, any number of times. Each chooses the projection rank on the sample blocks the
    unsplit search would use, so all parts run at its rank."""
    reference, k, dev = _part_args(reference, k, plan, part, memory_budget_mb, device, "kneighbors_part")
    if method not in _METHODS:
        raise EstimatorError(f"kneighbors_part: method must be one of {', '.join(_METHODS)}, got {method!r}")
    if plan.needs_bounds:
        raise EstimatorError("kneighbors_part: the plan has no bounds yet (bounds_part, then KNNPlan.with_bounds)")
    n = reference.shape[0]
    if plan.labels is None:
        a, b = part * n // plan.parts, (part + 1) * n // plan.parts
        if a == b:
            empty = torch.zeros((0, k), dtype=torch.float64)
            return KNNPart(torch.zeros(0, dtype=torch.long), empty, empty.long(), {"method": "brute", "rows": [a, b]})
        r = kneighbors(
            reference,
            k,
            query_index=torch.arange(a, b),
            device=dev,
            memory_budget_mb=memory_budget_mb,
            progress=progress,
            method=method,
        )
        return KNNPart(torch.arange(a, b), r.distances, r.indices, {**r.stats, "rows": [a, b]})
    out_d = torch.empty((n, k), dtype=torch.float64, device=dev)
    out_i = torch.empty((n, k), dtype=_id_dtype(n), device=dev)
    stats: dict = {"method": "pruned-symmetric-part"}
    _symmetric_call(
        reference,
        k,
        dev,
        memory_budget_mb,
        stats,
        part=_symmetric_part(plan, part),
        out=(out_d, out_i),
        progress=progress,
        force=None if method == "auto" else method,
    )
    out_d, out_i = out_d.cpu(), out_i.cpu().long()
    rows = torch.nonzero(out_i[:, 0] >= 0).flatten()
    progress(1.0, "knn")
    return KNNPart(rows, out_d.index_select(0, rows), out_i.index_select(0, rows), stats)


def merge_parts(parts: list[KNNPart], n: int, k: int) -> KNNResult:
    """The exact kNN from the parts of one plan: each row's k best by (distance, index) over all parts' lists.

    A pair that two parts both list (with the same distance: the same float64 kernel computes it) counts once, so a
    part given twice changes nothing. Raises ValueError when the parts do not add up to an answer: a row with fewer
    than k neighbours (a part is missing), or a pair listed with two distances (parts of different plans).

    One pass over the rows, a chunk at a time: each chunk's lists from every part side by side, then one sort (a
    pass per part, each merging into the table so far, sorted twice as many entries)."""
    for p in parts:
        if p.distances.shape[1] != k or (p.rows.numel() and (int(p.rows.min()) < 0 or int(p.rows.max()) >= n)):
            raise ValueError(f"merge_parts: a part of shape {tuple(p.distances.shape)} does not fit n={n}, k={k}")
    lists = []  # each part's rows ascending (as kneighbors_part gives them), to find a chunk's rows by bisection
    for p in parts:
        rows, d, i = p.rows, p.distances, p.indices
        if rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all()):
            o = torch.argsort(rows, stable=True)
            rows, d, i = rows[o], d[o], i[o]
        lists.append((rows, d, i))
    width = max(1, len(parts)) * k
    out_d = torch.empty((n, k), dtype=torch.float64)
    out_i = torch.empty((n, k), dtype=torch.long)
    step = max(1, _MERGE_ENTRIES // max(width, 1))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        d = torch.full((r1 - r0, width), math.inf, dtype=torch.float64)
        i = torch.full((r1 - r0, width), -1, dtype=torch.long)
        for j, (rows, pd, pi) in enumerate(lists):
            a, b = torch.searchsorted(rows, torch.tensor([r0, r1], dtype=rows.dtype)).tolist()
            if a < b:
                local = rows[a:b] - r0
                d[local, j * k : (j + 1) * k] = pd[a:b]
                i[local, j * k : (j + 1) * k] = pi[a:b].long()
        o = torch.argsort(i, dim=1, stable=True)  # (distance, index): index first, then a stable sort by distance
        d, i = d.gather(1, o), i.gather(1, o)
        # a pair two parts both met (a row a part re-checked against every column, see the exact phase) is listed
        # by both with the same float64 distance: keep one. Different distances: different plans.
        twice = torch.zeros_like(i, dtype=torch.bool)
        twice[:, 1:] = (i[:, 1:] == i[:, :-1]) & (i[:, 1:] >= 0)
        if bool(twice.any()):
            prev = torch.zeros_like(d)
            prev[:, 1:] = d[:, :-1]
            if not torch.equal(d[twice], prev[twice]):
                raise ValueError("merge_parts: a neighbour has two distances; the parts come from different plans")
            d = d.masked_fill(twice, math.inf)
            i = i.masked_fill(twice, -1)
        o = torch.argsort(d, dim=1, stable=True)[:, :k]
        out_d[r0:r1], out_i[r0:r1] = d.gather(1, o), i.gather(1, o)
    if bool((out_i < 0).any()):
        short = int((out_i < 0).any(1).sum())
        raise ValueError(f"merge_parts: {short} rows have fewer than {k} neighbours; a part is missing")
    return KNNResult(distances=out_d, indices=out_i, query_index=None, stats={"method": "parts", "parts": len(parts)})


def _search(
    ref,
    k,
    dev,
    memory_budget_mb,
    stats,
    prune,
    symmetric,
    method,
    threads,
    qi,
    q_rows,
    self_query,
    out_d,
    out_i,
    progress,
) -> None:
    """The body of :func:`kneighbors` once its arguments are checked."""
    n, D = ref.shape
    nq = q_rows.shape[0]
    eng = _Engine(ref, k, dev, int(memory_budget_mb) * 2**20, stats, defer_frame=symmetric)
    eng.threads = threads
    stats["gemm_dtype"] = str(eng.cdt).replace("torch.", "")
    stats["exact_kernel"] = "native" if dev.type == "cpu" and _native.available() else "torch"
    if symmetric:
        stats["method"] = "pruned-symmetric"
        _pruned_symmetric(eng, out_d, out_i, progress, force=None if method == "auto" else method)
    else:
        if self_query:
            q, qnorm, qcnorm = eng.x.index_select(0, qi), eng.norm.index_select(0, qi), eng.cnorm.index_select(0, qi)
        else:
            q, qnorm = eng.frame(q_rows)
            qcnorm = (
                qnorm
                if eng.centered
                else torch.cat(
                    [
                        torch.linalg.vector_norm(q_rows[s : s + eng.chunk].to(torch.float64) - eng.mu, dim=1)
                        for s in range(0, nq, eng.chunk)
                    ]
                )
            )
        eng.qnorm = qnorm
        eng.clock.lap("prepare")
        if prune and method != "brute":
            stats["method"] = "pruned"
            _pruned(eng, q, qnorm, qcnorm, q_rows, qi, out_d, out_i, progress, fallback=method == "auto")
        else:
            eng.brute(q, qnorm, q_rows, qi, out_d, out_i, progress)
    stats["candidates_mean"] = round(eng.examined / nq, 3)
    if bool((out_i < 0).any()):  # cannot happen if the bounds hold; never return a partial answer
        raise RuntimeError("kneighbors: internal error, a query ended with fewer than k exact neighbours")
    progress(1.0, "knn")
    del eng


def _as_matrix(X, name: str) -> torch.Tensor:
    """A 2-D float32/float64 tensor (other real dtypes become float64); the checks are :func:`as_matrix`'s."""
    X = (
        as_matrix(X, "kneighbors", what=name)
        if (isinstance(X, (torch.Tensor, np.ndarray)) and X.ndim == 2)
        else _not_a_matrix(X, name)
    )
    if X.dtype not in (torch.float32, torch.float64):
        X = X.to(torch.float64)
    return X


def _not_a_matrix(X, name: str):
    shape = tuple(X.shape) if hasattr(X, "shape") else type(X).__name__
    raise EstimatorError(f"kneighbors: {name} must be a torch.Tensor or numpy array of shape (N, D), got {shape}")
