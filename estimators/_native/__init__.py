"""Native kernels, loaded with ctypes when the optional C extension was built (``setup.py``).

:func:`pair_distances` is the fused form of :func:`estimators.knn.exact_distances` on the CPU: the same
difference-based float64 distance (METHODS §0), one pass over the two rows instead of a float64 copy of each.
It returns ``None`` when the kernel is not available (no compiler at install time, ``TASKGAUGE_NATIVE=0``) or
the arguments are not its case (non-CPU tensors, mixed dtypes), and the caller falls back to torch.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_ABI = 1
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
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                           ctypes.c_int64, ctypes.c_void_p]
        return lib
    return None


_lib = _load()


def available() -> bool:
    """True when the native kernel is loaded (reported in kNN stats as ``exact_kernel``)."""
    return _lib is not None


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
    item_a, item_i, item_o = A.element_size(), 8, 8

    def run(s: int, e: int) -> None:
        fn(A.data_ptr(), ia.data_ptr() + s * item_i, B.data_ptr(), ib.data_ptr() + s * item_i, e - s, D,
           out.data_ptr() + s * item_o)

    del item_a
    threads = max(1, torch.get_num_threads())
    if threads == 1 or P < _THREAD_MIN_PAIRS:
        run(0, P)
        return out
    if _pool is None or _pool._max_workers != threads:  # noqa: SLF001 - resize with torch's thread count
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="taskgauge-exact")
    step = -(-P // threads)
    list(_pool.map(lambda s: run(s, min(P, s + step)), range(0, P, step)))
    return out
