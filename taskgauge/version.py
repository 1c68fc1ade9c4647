"""The installed taskgauge version (cheap: no torch import)."""

from __future__ import annotations


def taskgauge_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("taskgauge")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"
