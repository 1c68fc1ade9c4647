"""The ``Annotated`` dependencies routes declare.

``SessionDep`` (a SQLAlchemy session; the route or service owns the one commit), ``OwnerDep`` (the API key's
owner, from ``Authorization: Bearer …``), ``StateDep`` (the service :class:`~taskgauge.context.Context`: settings, engine, blob store, enqueue).
"""

from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from taskgauge.auth import Principal, authenticate
from taskgauge.context import Context
from taskgauge.errors import Unauthorized


def get_state(request: Request) -> Context:
    return request.app.state.taskgauge


StateDep = Annotated[Context, Depends(get_state)]


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


MAX_OFFSET = 10**9
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip (0 to 10^9).")]
"""``?offset=`` of the list routes: bounded, so that no value overflows the database's 64-bit integers (422)."""
