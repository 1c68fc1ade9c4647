"""Runtime state built by the app's lifespan, and the ``Annotated`` dependencies routes declare.

``SessionDep`` (a SQLAlchemy session; the route or service owns the one commit), ``OwnerDep`` (the API key's
owner, from ``Authorization: Bearer …``), ``StateDep`` (settings, engine, blob store, worker config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.auth import Principal, authenticate
from app.errors import Unauthorized
from app.settings import Settings
from workers.blobstore import BlobStore
from workers.celery_app import WorkerConfig


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    blobs: BlobStore
    worker_config: WorkerConfig

    @property
    def upload_tmp(self) -> Path:
        return Path(self.settings.DATA_DIR) / "tmp" / "uploads"


def get_state(request: Request) -> AppState:
    return request.app.state.taskgauge


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_owner(request: Request, state: StateDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "send your API key as 'Authorization: Bearer tg_…'; make one with `taskgauge keys create NAME` "
            "(the embedded server writes one to DATA_DIR/local_api_key)"
        )
    with state.sessions() as s:
        principal = authenticate(s, token.strip())
    if principal is None:
        raise Unauthorized("this API key is unknown or revoked; make a new one with `taskgauge keys create NAME`")
    return principal


OwnerDep = Annotated[Principal, Depends(current_owner)]
