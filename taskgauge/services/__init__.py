"""The service layer: what the API routes, the dashboard, the CLI and the workers do with datasets, analyses,
schedules and reports. Services raise :mod:`taskgauge.errors` (never ``HTTPException``), build ``select()``
statements and own the transaction of the operation they perform.

Ownership is enforced in one place, :func:`get_owned`: every read of a resource by id filters by its owner, so
another owner's id is "not found" (never "forbidden": its existence is not revealed).
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from taskgauge import db
from taskgauge.errors import NotFound, not_found

T = TypeVar("T")

_HINTS: dict[type, tuple[str, str]] = {
    db.Dataset: ("dataset", "list yours with GET /api/v1/datasets"),
    db.ModelSpec: ("model spec", "list yours with GET /api/v1/model-specs"),
    db.Analysis: ("analysis", "list yours with GET /api/v1/analyses"),
    db.Report: ("report", "find report ids with GET /api/v1/datasets/{id}/reports"),
    db.Schedule: ("schedule", "list yours with GET /api/v1/schedules"),
}


def get_owned(session: Session, model: type[T], owner_id: str, ident: str, *, lock: bool = False) -> T:
    """The row of ``model`` with id ``ident`` that belongs to ``owner_id``; :class:`NotFound` otherwise."""
    q = select(model).where(model.id == ident, model.owner_id == owner_id)  # type: ignore[attr-defined]
    if lock:
        q = q.with_for_update()
    row = session.scalar(q)
    if row is None:
        what, hint = _HINTS[model]
        raise not_found(what, ident, hint)
    return row


def page(session: Session, query: Any, order_by: tuple, *, limit: int, offset: int) -> tuple[list[Any], int]:
    """One page of ``query`` and the total count."""
    from sqlalchemy import func

    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(session.scalars(query.order_by(*order_by).limit(limit).offset(offset)))
    return rows, int(count)


__all__ = ["NotFound", "get_owned", "page"]
