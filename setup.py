"""Build step for the one native piece: estimators/_native/exact.c, the fused float64 pair-distance kernel.

Everything else is in pyproject.toml. The kernel is loaded with ctypes (no Python API); the extension is optional:
without a C compiler the install still succeeds and taskgauge uses its torch implementation of the same distances
(estimators/_native/__init__.py says which one is in use).
"""

from pathlib import Path

from setuptools import Extension, setup

SOURCE = "estimators/_native/exact.c"

setup(
    ext_modules=[
        Extension(
            "estimators._native._exact",
            sources=[SOURCE],
            extra_compile_args=["-O3", "-fno-fast-math", "-std=c99"],
            optional=True,
        )
    ]
    # the Dockerfile installs the dependencies before it copies the source: nothing to build yet
    if (Path(__file__).resolve().parent / SOURCE).exists()
    else [],
)
