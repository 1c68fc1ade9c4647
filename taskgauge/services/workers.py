"""The live workers, as they report themselves in ``worker_heartbeats`` (written by ``workers.presence``), and who
may see them: admins (``TASKGAUGE_ADMIN_OWNERS``; with the embedded broker also the ``local`` owner)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from taskgauge import db
from taskgauge.errors import Forbidden
from taskgauge.settings import Settings


def require_admin(session: Session, owner_id: str, settings: Settings) -> None:
    """Forbidden unless the owner's name is one of ``settings.admin_owners``."""
    name = session.scalar(select(db.Owner.name).where(db.Owner.id == owner_id))
    if name is None or name not in settings.admin_owners:
        raise Forbidden(
            "only admins may list the workers; an admin is an owner named in TASKGAUGE_ADMIN_OWNERS "
            "(comma-separated owner names) on the API server"
        )


def list_workers(session: Session, settings: Settings, *, include_gone: bool = False) -> list[dict[str, Any]]:
    """Workers whose heartbeat is younger than ``LEASE_S`` (with ``include_gone``, the others too, marked
    ``live: false``), by name; each running task gets its analysis' status, stage and progress."""
    W, A = db.WorkerHeartbeat, db.Analysis
    now = db.utcnow()
    cutoff = now - timedelta(seconds=settings.LEASE_S)
    query = select(W).order_by(W.hostname, W.name)
    if not include_gone:
        query = query.where(W.heartbeat_at >= cutoff)
    rows = list(session.scalars(query))
    ids = {t.get("analysis_id") for r in rows for t in (r.active or []) if t.get("analysis_id")}
    analyses = {a.id: a for a in session.execute(select(A.id, A.status, A.stage, A.progress).where(A.id.in_(ids)))}
    out = []
    for r in rows:
        tasks = []
        for t in r.active or []:
            a = analyses.get(t.get("analysis_id"))
            tasks.append(
                {
                    **t,
                    "status": a.status if a else None,
                    "stage": a.stage if a else None,
                    "progress": a.progress if a else None,
                }
            )
        out.append(
            {
                "name": r.name,
                "hostname": r.hostname,
                "pid": r.pid,
                "queues": list(r.queues or []),
                "concurrency": r.concurrency,
                "device": r.device,
                "version": r.version,
                "started_at": r.started_at,
                "heartbeat_at": r.heartbeat_at,
                "live": r.heartbeat_at >= cutoff,
                "active": tasks,
            }
        )
    return out
