"""Native kernels, loaded with ctypes when the optional C extension was built (``setup.py``).

:func:`pair_distances` is the fused form of :func:`estimators.knn.exact_distances` on the CPU: the same
difference-based float64 distance (docs/methods.md §0), one pass over the two rows instead of a float64 copy of each.
:func:`topk_merge` keeps each row's k best (distance, index) pairs by insertion, in place, where the torch form
sorts. Both tell the caller when they do not apply: the kernel is not available (no compiler at install time,
``TASKGAUGE_NATIVE=0``) or the arguments are not its case (non-CPU tensors, other dtypes), and the caller then
uses torch.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_ABI = 6
#: pairs below which one thread does the work (thread hand-off costs more than it saves)
_THREAD_MIN_PAIRS = 4096

_lib = None
_pool: ThreadPoolExecutor | None = None


def _load():
    """The shared library, or None (not built, disabled, or a stale build of another ABI)."""
    if os.environ.get("TASKGAUGE_NATIVE", "1") == "0":
        return None
    here = Path(__file__).resolve().parent
    for path in sorted(here.glob("_exact*.so")) + sorted(here.glob("_exact*.pyd")):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        lib.tg_native_abi.restype = ctypes.c_int
        if lib.tg_native_abi() != _ABI:
            continue
        for name in ("tg_pair_dist_f32", "tg_pair_dist_f64"):
            fn = getattr(lib, name)
            fn.restype = None
            fn.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_void_p,
            ]
        fn = lib.tg_block_candidates
        fn.restype = ctypes.c_int64
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
        ]
        for name in ("tg_block_candidates_ref_f32", "tg_block_candidates_ref_f64"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int64
            fn.argtypes = [
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int64,
            ]
        fn = lib.tg_block_scan
        fn.restype = ctypes.c_int64
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_double,
            ctypes.c_double,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
        ]
        for name in ("tg_topk_merge", "tg_topk_merge_i32"):
            fn = getattr(lib, name)
            fn.restype = None
            fn.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int64,
            ]
        return lib
    return None


_lib = _load()


def available() -> bool:
    """True when the native kernel is loaded (reported in kNN stats as ``exact_kernel``)."""
    return _lib is not None


class BlockCandidates:
    """Reused output buffers of :meth:`run` (one per search)."""

    def __init__(self, capacity: int = 1 << 13):
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.cap = capacity
        self.rows = torch.empty(capacity, dtype=torch.int64)
        self.cols = torch.empty(capacity, dtype=torch.int64)
        self.d = torch.empty(capacity, dtype=torch.float64)

    def run(self, sq, thr_row, thr_col, nb: int, q, xg, row_ids, col_ids):
        """Candidates of one block with their exact distances (``tg_block_candidates`` in exact.c): float32
        ``sq`` (R, C), ``thr_row`` (R,), ``thr_col`` (C,), rows ``q`` (R, D) and gathered columns ``xg`` (C, D),
        int64 ids. Returns (query ids, reference ids, distances), fresh tensors."""
        args = [t.contiguous() for t in (sq, thr_row, thr_col, q, xg, row_ids, col_ids)]
        sq, thr_row, thr_col, q, xg, row_ids, col_ids = args
        R, C = sq.shape
        for _ in range(2):
            m = _lib.tg_block_candidates(
                sq.data_ptr(),
                R,
                C,
                thr_row.data_ptr(),
                thr_col.data_ptr(),
                int(nb),
                q.data_ptr(),
                xg.data_ptr(),
                int(q.shape[1]),
                row_ids.data_ptr(),
                col_ids.data_ptr(),
                self.rows.data_ptr(),
                self.cols.data_ptr(),
                self.d.data_ptr(),
                self.cap,
            )
            if m <= self.cap:
                return self.rows[:m].clone(), self.cols[:m].clone(), self.d[:m].clone()
            self._alloc(max(m, 2 * self.cap))
        raise RuntimeError("tg_block_candidates: the output did not fit after growing")  # cannot happen

    def run_ref(self, sq, thr_row, thr_col, nb: int, ref, row_ids, col_ids):
        """As :meth:`run`, with the exact distances taken from the rows ``row_ids``/``col_ids`` of ``ref`` (the
        original (n, D) float32 or float64 data, ``tg_block_candidates_ref_*`` in exact.c)."""
        fn = {torch.float32: _lib.tg_block_candidates_ref_f32, torch.float64: _lib.tg_block_candidates_ref_f64}[
            ref.dtype
        ]
        sq, thr_row, thr_col, row_ids, col_ids = (t.contiguous() for t in (sq, thr_row, thr_col, row_ids, col_ids))
        R, C = sq.shape
        for _ in range(2):
            m = fn(
                sq.data_ptr(),
                R,
                C,
                thr_row.data_ptr(),
                thr_col.data_ptr(),
                int(nb),
                ref.data_ptr(),
                int(ref.shape[1]),
                row_ids.data_ptr(),
                col_ids.data_ptr(),
                self.rows.data_ptr(),
                self.cols.data_ptr(),
                self.d.data_ptr(),
                self.cap,
            )
            if m <= self.cap:
                return self.rows[:m].clone(), self.cols[:m].clone(), self.d[:m].clone()
            self._alloc(max(m, 2 * self.cap))
        raise RuntimeError("tg_block_candidates_ref: the output did not fit after growing")  # cannot happen


class BlockScan:
    """Reused output buffers of ``tg_block_scan`` (exact.c): the fused top-k scan of one block of the symmetric
    search. ``klist`` (n, k) float32 and ``thr`` (n,) float32 are the caller's per-row state, updated in place."""

    def __init__(self):
        self.cap = 0
        self.rows = self.cols = self.s = None

    def run(self, sq, nb: int, rpos, cpos, klist, thr, Nrow, E: float, eta: float):
        """Candidates (row position, column position, sq) of one block (int32, int32, float32 tensors, fresh)."""
        sq, rpos, cpos = sq.contiguous(), rpos.to(torch.int64).contiguous(), cpos.to(torch.int64).contiguous()
        R, C = sq.shape
        need = 2 * R * C  # the most entries a block can give: never out of room (the row lists must not see a
        if need > self.cap:  # value twice, so the kernel is never run twice on one block)
            self.cap = max(need, 2 * self.cap)
            self.rows = torch.empty(self.cap, dtype=torch.int32)
            self.cols = torch.empty(self.cap, dtype=torch.int32)
            self.s = torch.empty(self.cap, dtype=torch.float32)
        m = _lib.tg_block_scan(
            sq.data_ptr(),
            R,
            C,
            int(nb),
            rpos.data_ptr(),
            cpos.data_ptr(),
            klist.data_ptr(),
            thr.data_ptr(),
            Nrow.data_ptr(),
            int(klist.shape[1]),
            float(E),
            float(eta),
            self.rows.data_ptr(),
            self.cols.data_ptr(),
            self.s.data_ptr(),
            self.cap,
        )
        if m > self.cap:
            raise RuntimeError("tg_block_scan: more entries than a block can have")  # cannot happen
        return self.rows[:m].clone(), self.cols[:m].clone(), self.s[:m].clone()


def topk_merge(
    rows: torch.Tensor, cols: torch.Tensor, d: torch.Tensor, out_d: torch.Tensor, out_i: torch.Tensor
) -> bool:
    """Merge exact pairs into the rows' k best in place (see ``tg_topk_merge`` in exact.c); ``out_i`` int64 or
    int32 (``rows``/``cols`` are converted to its dtype). False when the kernel does not apply (then the caller
    merges with torch)."""
    fn = None
    if _lib is not None:
        fn = {torch.int64: _lib.tg_topk_merge, torch.int32: _lib.tg_topk_merge_i32}.get(out_i.dtype)
    if (
        fn is None
        or out_d.device.type != "cpu"
        or out_d.dtype != torch.float64
        or not out_d.is_contiguous()
        or not out_i.is_contiguous()
        or out_d.shape != out_i.shape
    ):
        return False
    rows = rows.to(out_i.dtype).contiguous()
    cols = cols.to(out_i.dtype).contiguous()
    d = d.to(torch.float64).contiguous()
    fn(
        rows.data_ptr(),
        cols.data_ptr(),
        d.data_ptr(),
        int(rows.shape[0]),
        out_d.data_ptr(),
        out_i.data_ptr(),
        int(out_d.shape[1]),
    )
    return True


def pair_distances(A: torch.Tensor, ia: torch.Tensor, B: torch.Tensor, ib: torch.Tensor) -> torch.Tensor | None:
    """``out[p] = |A[ia[p]] - B[ib[p]]|`` in float64, or None when the native kernel does not apply."""
    global _pool
    if _lib is None or A.device.type != "cpu" or B.device.type != "cpu" or A.dtype != B.dtype:
        return None
    fn = {torch.float32: _lib.tg_pair_dist_f32, torch.float64: _lib.tg_pair_dist_f64}.get(A.dtype)
    if fn is None or A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[1]:
        return None
    A, B = A.contiguous(), B.contiguous()
    ia = ia.to(torch.int64).contiguous()
    ib = ib.to(torch.int64).contiguous()
    P, D = int(ia.shape[0]), int(A.shape[1])
    out = torch.empty(P, dtype=torch.float64)
    if P == 0:
        return out

    def run(s: int, e: int) -> None:  # pairs [s, e): int64 indices and float64 outputs, 8 bytes each
        fn(A.data_ptr(), ia.data_ptr() + 8 * s, B.data_ptr(), ib.data_ptr() + 8 * s, e - s, D, out.data_ptr() + 8 * s)

    threads = max(1, torch.get_num_threads())
    if threads == 1 or P < _THREAD_MIN_PAIRS:
        run(0, P)
        return out
    if _pool is None or _pool._max_workers != threads:  # noqa: SLF001 - resize with torch's thread count
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="taskgauge-exact")
    step = -(-P // threads)
    list(_pool.map(lambda s: run(s, min(P, s + step)), range(0, P, step)))
    return out
