"""Is any worker consuming the ``gpu`` queue? ``POST /analyses`` with ``device: "cuda"`` is refused (409) when not,
instead of staying queued forever.

``TASKGAUGE_GPU_WORKERS``: ``yes`` / ``no`` say it outright (an operator who runs GPU workers that may be briefly
down sets ``yes``). ``auto`` (the default) finds out:

- embedded default (no broker): the embedded worker is started by ``taskgauge serve`` on this host and takes the gpu
  queue exactly when CUDA is available and ``TASKGAUGE_DEVICE`` is not ``cpu`` (``taskgauge worker``'s default), so
  the API asks torch the same question;
- with a broker: a Celery ``inspect().active_queues()`` broadcast with a 1 s timeout; a worker that answers with the
  ``gpu`` queue counts. The answer is cached for 30 s (a "no" for 5 s, so a GPU worker that just started is seen
  soon).
"""

from __future__ import annotations

import threading
import time

from taskgauge.services.analyses import GPU_QUEUE
from taskgauge.settings import Settings

INSPECT_TIMEOUT_S = 1.0
CACHE_YES_S = 30.0
CACHE_NO_S = 5.0
_cache: dict[str, tuple[float, bool]] = {}
_lock = threading.Lock()


def gpu_queue_consumed(settings: Settings) -> bool:
    if settings.GPU_WORKERS != "auto":
        return settings.GPU_WORKERS == "yes"
    if settings.embedded_broker:
        if settings.DEVICE == "cpu":
            return False
        import torch

        return bool(torch.cuda.is_available())
    with _lock:
        now = time.monotonic()
        hit = _cache.get(settings.BROKER_URL)
        if hit is not None and now < hit[0]:
            return hit[1]
        found = _inspect()
        _cache[settings.BROKER_URL] = (now + (CACHE_YES_S if found else CACHE_NO_S), found)
        return found


def _inspect() -> bool:
    from workers.celery_app import celery_app

    try:
        replies = celery_app.control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues() or {}
    except Exception:  # noqa: BLE001 - an unreachable broker: no consumer we can see
        return False
    return any(q.get("name") == GPU_QUEUE for queues in replies.values() for q in (queues or []))
