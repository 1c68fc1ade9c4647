"""Giving freed heap memory back to the OS after a search (glibc ``malloc_trim``)."""

from __future__ import annotations

import torch

_malloc_trim = None


def release_freed_memory(dev: torch.device | str = "cpu") -> None:
    """Hand the heap pages that the search freed back to the OS (glibc ``malloc_trim``).

    The search allocates and frees many medium-sized temporaries; glibc keeps freed heap pages mapped, so without
    this the resident set of a process that runs several analyses grows from call to call. The estimators call it
    once more at their end, after their own post-processing. Linux/glibc CPU only; a no-op elsewhere."""
    global _malloc_trim
    if torch.device(dev).type != "cpu":
        return
    if _malloc_trim is None:
        _malloc_trim = False
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            _malloc_trim = libc.malloc_trim
            _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            pass
    if _malloc_trim:
        _malloc_trim(0)
