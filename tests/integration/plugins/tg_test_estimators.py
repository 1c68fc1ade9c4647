"""Test-only estimators: a plugin found through its ``taskgauge.estimators`` entry point (the dist-info folder
beside this file) by the API and the real worker processes of the integration tests, which get this folder on
``PYTHONPATH``. Never installed, so never registered in production.

* ``tg_slow``: sleeps ``seconds`` in small steps, reporting progress, then returns the data's dimension D.
* ``tg_fail``: raises ``RuntimeError`` (a crashing estimator must fail its analysis, not the worker).
* ``tg_crash``: SIGKILLs its own process, as the kernel's OOM killer would (a poison analysis: it must end
  ``failed`` after ``TASKGAUGE_MAX_ATTEMPTS``, not be retried forever).
"""

from __future__ import annotations

import time

from pydantic import Field

from estimators.base import Params, Result
from estimators.registry import register


class SlowParams(Params):
    seconds: float = Field(5.0, ge=0, le=120)


@register(name="tg_slow", version="0.0.1", params=SlowParams, summary="test only: sleeps, then returns D")
def tg_slow(X, y, params: SlowParams, *, device, progress) -> Result:
    steps = max(1, int(params.seconds / 0.1))
    for i in range(steps):
        time.sleep(params.seconds / steps)
        progress((i + 1) / steps, f"sleeping {i + 1}/{steps}")
    return Result(value=float(X.shape[1]))


class FailParams(Params):
    pass


@register(name="tg_fail", version="0.0.1", params=FailParams, summary="test only: always raises")
def tg_fail(X, y, params: FailParams, *, device, progress) -> Result:
    progress(0.5, "about to fail")
    raise RuntimeError("deliberate test failure")


class CrashParams(Params):
    pass


@register(name="tg_crash", version="0.0.1", params=CrashParams, summary="test only: SIGKILLs its own process")
def tg_crash(X, y, params: CrashParams, *, device, progress) -> Result:
    import os
    import signal

    progress(0.5, "about to be killed")
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")
