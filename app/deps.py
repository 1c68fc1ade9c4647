"""The ``Annotated`` dependencies routes declare.

``ReadDep`` (``await read(fn)``: the API key's owner and ``fn(session, owner)`` in one worker-thread call — every
read route), ``WriteSessionDep`` (a SQLAlchemy session for routes that write; the route or service owns the one
commit), ``OwnerDep`` (the API key's owner, from ``Authorization: Bearer …``, for the routes that write),
``StateDep`` (the service :class:`~taskgauge.context.Context`: settings, engine, blob store, enqueue).

Thread hops. FastAPI runs each sync (``def``) dependency, the start and the end of a sync generator dependency, a
sync route and the validation of its response model each as a separate call in the thread pool; every call waits
for a free thread, then for the event loop to pick its result up. A ``def`` read route with a state, an owner and a
session dependency made six such calls, and on a busy CPU (uploads being parsed, analyses running) each costs tens
to hundreds of milliseconds. So ``StateDep`` is ``async`` (an attribute read), and the read routes are ``async``
and make one call, ``await read(fn)``, which looks the key up, runs ``fn`` and builds the response model in one
session. A missing or malformed ``Authorization`` header is refused (401) before that, on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from taskgauge.auth import Principal, authenticate
from taskgauge.context import Context
from taskgauge.errors import Unauthorized

MAX_OFFSET = 1_000_000_000  # list offsets above this are refused (422); SQLite cannot bind integers past 2**63


async def get_state(request: Request) -> Context:  # async: no thread-pool call for an attribute read
    return request.app.state.taskgauge


StateDep = Annotated[Context, Depends(get_state)]

T = TypeVar("T")


NO_KEY = (
    "send your API key as 'Authorization: Bearer tg_…'; make one with `taskgauge keys create NAME` "
    "(the embedded server writes one to DATA_DIR/local_api_key)"
)
UNKNOWN_KEY = "this API key is unknown or revoked; make a new one with `taskgauge keys create NAME`"


def bearer_key(request: Request) -> str:
    """The API key of ``Authorization: Bearer <key>``; 401 when the header is missing or malformed."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(NO_KEY)
    return token.strip()


def owner_of(session: Session, key: str) -> Principal:
    principal = authenticate(session, key)
    if principal is None:
        raise Unauthorized(UNKNOWN_KEY)
    return principal


class Reader:
    """``await read(fn)``: in one worker thread and one session (a deferred read transaction on SQLite: it never
    waits for writers), the API key's owner is looked up (401 when unknown or revoked) and ``fn(session, owner)``
    runs; ``fn`` returns the response model, so the event loop only serialises it."""

    __slots__ = ("_sessions", "_key")

    def __init__(self, sessions: sessionmaker, key: str) -> None:
        self._sessions, self._key = sessions, key

    async def __call__(self, fn: Callable[[Session, Principal], T]) -> T:
        return await run_in_threadpool(self._run, fn)

    def _run(self, fn: Callable[[Session, Principal], T]) -> T:
        with self._sessions() as session:
            return fn(session, owner_of(session, self._key))


async def get_reader(request: Request, state: StateDep) -> Reader:
    return Reader(state.sessions, bearer_key(request))


ReadDep = Annotated[Reader, Depends(get_reader)]


def get_write_session(state: StateDep) -> Iterator[Session]:
    """A session for a route that writes (it commits): its transaction is begun as a writing one (``BEGIN
    IMMEDIATE`` on SQLite, :class:`taskgauge.db.WriteSession`), so it never fails on a read→write upgrade."""
    with state.sessions() as session:
        session.begin()
        yield session


WriteSessionDep = Annotated[Session, Depends(get_write_session)]


def current_owner(request: Request, state: StateDep) -> Principal:
    key = bearer_key(request)
    with state.sessions() as s:
        return owner_of(s, key)


OwnerDep = Annotated[Principal, Depends(current_owner)]


MAX_OFFSET = 10**9
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip (0 to 10^9).")]
"""``?offset=`` of the list routes: bounded, so that no value overflows the database's 64-bit integers (422)."""
