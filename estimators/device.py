"""Device selection shared by every estimator."""

from __future__ import annotations

import torch

from estimators.base import EstimatorError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; ``"cuda"`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EstimatorError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(name if ":" in name else "cuda:0")
    if name == "cpu":
        return torch.device("cpu")
    raise EstimatorError(f"unknown device {device!r}; use auto, cpu or cuda")


def describe_device(device: torch.device) -> str:
    """Human-readable device for the report's ``environment.device``: ``cpu`` or ``cuda:0 (NVIDIA H100 …)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def set_threads(n: int) -> int:
    """Use ``n`` threads for torch's CPU kernels, the BLAS behind NumPy (threadpoolctl) and faiss, so that several
    worker processes on one machine share its cores instead of oversubscribing them. Returns ``n``."""
    import os

    n = max(1, int(n))
    # libraries loaded later (SciPy's OpenBLAS, faiss's OpenMP) read these when they load
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # threadpoolctl comes with scikit-learn; without it NumPy keeps its BLAS default
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    return n
