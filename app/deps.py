"""The ``Annotated`` dependencies routes declare.

``SessionDep`` (a SQLAlchemy session for reads; the route or service owns the one commit), ``WriteSessionDep`` (the
same for routes that write), ``OwnerDep`` (the API key's
owner, from ``Authorization: Bearer …``), ``StateDep`` (the service :class:`~taskgauge.context.Context`: settings, engine, blob store, enqueue).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from taskgauge.auth import Principal, authenticate
from taskgauge.context import Context
from taskgauge.errors import Unauthorized

MAX_OFFSET = 1_000_000_000  # list offsets above this are refused (422); SQLite cannot bind integers past 2**63


def get_state(request: Request) -> Context:
    return request.app.state.taskgauge


StateDep = Annotated[Context, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_write_session(state: StateDep) -> Iterator[Session]:
    """A session for a route that writes (it commits): its transaction is begun as a writing one (``BEGIN
    IMMEDIATE`` on SQLite, :class:`taskgauge.db.WriteSession`), so it never fails on a read→write upgrade."""
    with state.sessions() as session:
        session.begin()
        yield session


WriteSessionDep = Annotated[Session, Depends(get_write_session)]


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


MAX_OFFSET = 10**9
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip (0 to 10^9).")]
"""``?offset=`` of the list routes: bounded, so that no value overflows the database's 64-bit integers (422)."""
