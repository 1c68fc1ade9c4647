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

_ABI = 10
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
        fn = lib.tg_block_scan
        fn.restype = ctypes.c_int64
        ptr, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
        # dot R C nb rn2 cn2 rpos cpos tcol kv ki K k thr Nrow E eta
        scan_args = "p i i i p p p p p p p i i p p d d".split()
        fn.argtypes = [{"p": ptr, "i": i64, "d": f64}[a] for a in scan_args]
        fn = lib.tg_proj_keep
        fn.restype = ctypes.c_int64
        # G C R thr_r thr_c base out
        fn.argtypes = [{"p": ptr, "i": i64}[a] for a in "p i i p p i p".split()]
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
        for name in ("tg_frame_rows_f32", "tg_frame_rows_f64"):
            fn = getattr(lib, name)
            fn.restype = None
            # ref idx start m D mu out
            fn.argtypes = [{"p": ptr, "i": i64}[a] for a in "p p i i i p p".split()]
        return lib
    return None


_lib = _load()


def available() -> bool:
    """True when the native kernel is loaded (reported in kNN stats as ``exact_kernel``)."""
    return _lib is not None


class BlockScan:
    """``tg_block_scan`` (exact.c): the fused top-k scan of one block of the symmetric search. ``kv`` (n, K) float32
    and ``ki`` (n, K) int32 (each row's K smallest values offered and their partners) and ``thr`` (n,) float32 are
    the caller's per-row state, updated in place."""

    def __init__(self):
        self.tcol = torch.empty(0, dtype=torch.float32)

    def run(self, dot, nb: int, rn2, cn2, rpos, cpos, kv, ki, k: int, thr, Nrow, E: float, eta: float) -> int:
        """Scan one block: ``dot`` (R, C) float32 products, ``rn2``/``cn2`` float32 squared norms of its rows and
        columns, ``rpos``/``cpos`` int64 positions. Returns the number of offers."""
        dot, rn2, cn2 = dot.contiguous(), rn2.contiguous(), cn2.contiguous()
        rpos, cpos = rpos.to(torch.int64).contiguous(), cpos.to(torch.int64).contiguous()
        R, C = dot.shape
        if self.tcol.numel() < C:
            self.tcol = torch.empty(C, dtype=torch.float32)
        return int(
            _lib.tg_block_scan(
                dot.data_ptr(),
                R,
                C,
                int(nb),
                rn2.data_ptr(),
                cn2.data_ptr(),
                rpos.data_ptr(),
                cpos.data_ptr(),
                self.tcol.data_ptr(),
                kv.data_ptr(),
                ki.data_ptr(),
                int(kv.shape[1]),
                int(k),
                thr.data_ptr(),
                Nrow.data_ptr(),
                float(E),
                float(eta),
            )
        )


def proj_keep(G: torch.Tensor, thr_r: torch.Tensor, thr_c: torch.Tensor, base: int, out: torch.Tensor) -> int | None:
    """The projected test of one piece (``tg_proj_keep``): writes ``base + j`` for every column j (row of the float32
    ``G``, columns × rows) with ``G[j, i] <= thr_r[i]`` or ``G[j, i] <= thr_c[j]`` for some i into the int64 ``out``
    (ascending, at least ``len(G)`` long) and returns how many; None when the kernel does not apply (then the caller
    uses torch)."""
    if (
        _lib is None
        or G.device.type != "cpu"
        or G.dtype != torch.float32
        or thr_r.dtype != torch.float32
        or thr_c.dtype != torch.float32
        or out.dtype != torch.int64
        or not (G.is_contiguous() and thr_r.is_contiguous() and thr_c.is_contiguous() and out.is_contiguous())
        or G.dim() != 2
        or thr_r.numel() != G.shape[1]
        or thr_c.numel() != G.shape[0]
        or out.numel() < G.shape[0]
    ):
        return None
    C, R = int(G.shape[0]), int(G.shape[1])
    return int(_lib.tg_proj_keep(G.data_ptr(), C, R, thr_r.data_ptr(), thr_c.data_ptr(), int(base), out.data_ptr()))


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


def frame_rows(
    ref: torch.Tensor, mu: torch.Tensor, out: torch.Tensor, idx: torch.Tensor | None, start: int = 0
) -> bool:
    """``out = (ref[rows].double() - mu).float()`` with ``rows = idx`` (int64) or ``start .. start + len(out)``: rows
    of the kNN engine's centred float32 frame built from the reference (``tg_frame_rows_*``), in place. False when
    the kernel does not apply (then the caller uses torch)."""
    if _lib is None or ref.device.type != "cpu" or out.dtype != torch.float32 or mu.dtype != torch.float64:
        return False
    fn = {torch.float32: _lib.tg_frame_rows_f32, torch.float64: _lib.tg_frame_rows_f64}.get(ref.dtype)
    if fn is None or not (ref.is_contiguous() and out.is_contiguous() and mu.is_contiguous()):
        return False
    m, D = int(out.shape[0]), int(ref.shape[1])
    if idx is not None:
        idx = idx.to(torch.int64).contiguous()
        if idx.numel() != m:
            return False
    elif start < 0 or start + m > ref.shape[0]:
        return False
    fn(ref.data_ptr(), None if idx is None else idx.data_ptr(), int(start), m, D, mu.data_ptr(), out.data_ptr())
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
