"""Each worker reports itself in the ``worker_heartbeats`` table: who it is, which queues it consumes, the device
its analyses run on and the tasks it runs now (``GET /api/v1/workers``, ``taskgauge workers``).

The worker's main process writes its row when it is ready and then every ``HEARTBEAT_S`` from a thread, and
deletes it on a clean shutdown; a killed worker's row simply stops being refreshed and is listed as gone after
``LEASE_S`` (rows gone for a day are pruned). The running tasks come from Celery's own bookkeeping in the main
process (``celery.worker.state.active_requests``, what ``celery inspect active`` reports), so nothing is written
from inside a task. This works on every broker: the embedded filesystem transport has no broadcast for
``celery inspect``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import Any

from celery import signals
from sqlalchemy import delete, update

from taskgauge import db

log = logging.getLogger("taskgauge.worker")

PRUNE_AFTER = timedelta(days=1)

_stop = threading.Event()
_me: dict[str, Any] = {}


def worker_device(setting: str) -> str:
    """Where this worker's analyses run: ``cpu`` or ``cuda:0 (GPU name)`` (``TASKGAUGE_DEVICE`` resolved)."""
    if setting == "cpu":
        return "cpu"
    import torch

    from estimators.device import describe_device

    if not torch.cuda.is_available():
        return "cpu"
    return describe_device(torch.device("cuda:0"))


def active_tasks() -> list[dict[str, Any]]:
    """The tasks this worker runs now: name, task id, its arguments (short strings: the analysis id, a shard's
    key), the analysis id (a task's first argument, or its ``analysis_id`` keyword) and when it started (Unix
    time)."""
    from celery.worker import state

    out = []
    for req in list(state.active_requests):
        args, kwargs = list(getattr(req, "args", None) or []), dict(getattr(req, "kwargs", None) or {})
        analysis = kwargs.get("analysis_id") or (args[0] if args and isinstance(args[0], str) else None)
        out.append(
            {
                "task": req.name,
                "id": req.id,
                "args": [str(a)[:200] for a in args[:4]],
                "analysis_id": analysis,
                "started_at": getattr(req, "time_start", None),
            }
        )
    return sorted(out, key=lambda t: (t["started_at"] or 0, t["id"]))


def _row_values() -> dict[str, Any]:
    return {**_me, "active": active_tasks(), "heartbeat_at": db.utcnow()}


def beat_once(factory) -> None:
    """Write this worker's row (update, or insert the first time / after someone pruned it)."""
    W = db.WorkerHeartbeat
    values = _row_values()
    with factory() as s, s.begin():
        res = s.execute(update(W).where(W.name == values["name"]).values(**values))
        if res.rowcount == 0:
            s.add(W(**values))


@signals.worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    from taskgauge.version import taskgauge_version
    from workers.celery_app import celery_app, get_settings
    from workers.tasks import context

    settings = get_settings()
    consumed = getattr(celery_app.amqp.queues, "consume_from", None) or {}  # the -Q selection
    _me.clear()
    _me.update(
        name=str(getattr(sender, "hostname", None) or f"worker@{socket.gethostname()}"),
        hostname=socket.gethostname(),
        pid=os.getpid(),
        queues=sorted(consumed),
        concurrency=int(getattr(getattr(sender, "controller", None), "concurrency", None) or 1),
        device=worker_device(settings.DEVICE),
        version=taskgauge_version()[:50],
        started_at=db.utcnow(),
    )

    def loop() -> None:
        first = True
        while first or not _stop.wait(settings.HEARTBEAT_S):
            first = False
            try:
                factory = context().sessions
                beat_once(factory)
                with factory() as s, s.begin():
                    s.execute(
                        delete(db.WorkerHeartbeat).where(db.WorkerHeartbeat.heartbeat_at < db.utcnow() - PRUNE_AFTER)
                    )
            except Exception:  # noqa: BLE001 - the database may be briefly away; try again next beat
                log.warning("worker heartbeat failed", exc_info=True)

    threading.Thread(target=loop, name="taskgauge-presence", daemon=True).start()


@signals.worker_shutdown.connect
def _depart(**_: Any) -> None:
    _stop.set()
    if not _me:
        return
    try:
        from workers.tasks import context

        with context().sessions() as s, s.begin():
            s.execute(delete(db.WorkerHeartbeat).where(db.WorkerHeartbeat.name == _me["name"]))
    except Exception:  # noqa: BLE001 - the row then ages out after LEASE_S
        log.warning("could not remove this worker's heartbeat row", exc_info=True)
