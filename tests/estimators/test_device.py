"""estimators.device.set_threads: one call sets torch's and NumPy's BLAS thread pools (a worker child's share)."""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_info

from estimators.device import set_threads


def test_set_threads_sets_torch_and_blas_pools():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        assert torch.get_num_threads() == 1
        import scipy.linalg  # noqa: F401 - a BLAS that may load only now still gets one thread

        blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
        assert set_threads(0) == 1  # never below one thread
    finally:
        set_threads(before)
