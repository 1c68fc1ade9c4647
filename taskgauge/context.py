"""What a service call needs: the settings, the database, the blob store and a way to enqueue an analysis.

The API builds one :class:`Context` at startup (``app.main``), a worker builds one per process
(``workers.tasks``). ``enqueue`` is injected by the caller (``workers.celery_app.enqueue_analysis``) because the
domain never imports Celery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from taskgauge import db
from taskgauge.blobs import BlobStore, blob_store_for
from taskgauge.settings import Settings

#: ``enqueue(analysis_id, queue)``: send the analysis to a worker; called only after its row is committed.
Enqueue = Callable[[str, str], None]


@dataclass
class Context:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    blobs: BlobStore
    enqueue: Enqueue

    @classmethod
    def build(cls, settings: Settings, enqueue: Enqueue, **engine_kw: float) -> Context:
        if settings.is_sqlite:
            engine_kw.setdefault("busy_timeout_s", settings.SQLITE_BUSY_TIMEOUT_S)
        engine = db.make_engine(settings.DATABASE_URL, **engine_kw)
        return cls(
            settings=settings,
            engine=engine,
            sessions=db.make_session_factory(engine),
            blobs=blob_store_for(settings),
            enqueue=enqueue,
        )

    @property
    def upload_tmp(self) -> Path:
        return Path(self.settings.DATA_DIR) / "tmp" / "uploads"
