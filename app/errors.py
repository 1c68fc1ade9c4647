"""One handler: every error leaves the API as RFC 9457 ``application/problem+json``.

Services raise :class:`taskgauge.errors.TaskgaugeError` subclasses (never ``HTTPException``);
:func:`install_error_handlers` renders them, and also FastAPI's request-validation errors, Starlette's 404/405, ingest errors
(:class:`taskgauge.datasets.ingest.IngestError`), estimator errors and unexpected exceptions, in the same shape::

    {"type": "https://taskgauge.dev/problems/not-found", "title": "Not found", "status": 404,
     "detail": "dataset 3f2c… does not exist (or belongs to another key); list yours with GET /api/v1/datasets",
     "instance": "/api/v1/datasets/3f2c…"}

``detail`` always says what was wrong and how to fix it. Extra members (``errors`` for validation problems)
follow RFC 9457 §3.2. :data:`PROBLEM_RESPONSES` documents the shape in the OpenAPI spec (``responses=``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskgauge.errors import PROBLEM_MEDIA_TYPE, Problem, TaskgaugeError, clip, problem

log = logging.getLogger("taskgauge.api")

RETRY_AFTER_S = 2  # Retry-After of a 503 for a busy database


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    body = {k: v for k, v in body.items() if v is not None}
    return JSONResponse(body, status_code=int(body["status"]), media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _problem_doc(description: str) -> dict[str, Any]:
    return {"description": description, "model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _problem_doc("Bad request, e.g. a Host header this server does not answer to (problem+json)"),
    401: _problem_doc("Missing or invalid API key (problem+json)"),
    404: _problem_doc("No such resource for this API key (problem+json)"),
    413: _problem_doc("Request body over TASKGAUGE_MAX_JSON_BODY_KB (uploads: TASKGAUGE_MAX_UPLOAD_MB) (problem+json)"),
    422: _problem_doc("Invalid input; `detail` names the problem and the fix (problem+json)"),
}


def guard_responses() -> dict[int | str, dict[str, Any]]:
    """What any route may answer before it runs (app.security): 400 untrusted Host, 413 body too large."""
    return {c: PROBLEM_RESPONSES[c] for c in (400, 413)}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the common problems plus ``codes``."""
    docs = {
        400: "Bad request",
        403: "Only admins may do this",
        409: "Conflict with the resource's state",
        413: "Upload over TASKGAUGE_MAX_UPLOAD_MB",
        429: "Over a per-owner quota or a rate limit; retry after `Retry-After` seconds",
        503: "Database busy, or database, broker or worker unavailable; retry after `Retry-After` seconds",
    }
    out = dict(PROBLEM_RESPONSES)
    for c in codes:
        out[c] = _problem_doc(docs.get(c, "Problem") + " (problem+json)")
    return out


def install_error_handlers(app: FastAPI) -> None:
    from estimators.base import EstimatorError
    from taskgauge.datasets.ingest import IngestError

    @app.exception_handler(TaskgaugeError)
    async def _taskgauge(request: Request, exc: TaskgaugeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return problem_response(exc.to_problem(request.url.path), headers or None)

    @app.exception_handler(IngestError)
    async def _ingest(request: Request, exc: IngestError) -> JSONResponse:
        kind = "too-large" if exc.status == 413 else "bad-upload"
        return problem_response(problem(exc.title, exc.detail, exc.status, kind, instance=request.url.path))

    @app.exception_handler(EstimatorError)
    async def _estimator(request: Request, exc: EstimatorError) -> JSONResponse:
        return problem_response(
            problem("Invalid estimator request", str(exc), 422, "bad-estimator-request", instance=request.url.path)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [clip(p) if isinstance(p, str) else p for p in e.get("loc", ())][:20],
                "msg": clip(e.get("msg", ""), 300),
                "type": e.get("type", ""),
            }
            for e in exc.errors()[:50]
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return problem_response(
            problem(
                "Invalid request",
                f"{summary}. Fix these fields and send the request again (schema: /docs).",
                422,
                "invalid-request",
                instance=request.url.path,
                errors=errors,
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {clip(request.url.path, 200)}; the API lives under /api/v1 (see /docs)"
        elif exc.status_code == 405:
            path = clip(request.url.path, 200)
            detail = f"{clip(request.method)} is not allowed on {path}; see /docs for the methods"
        return problem_response(
            problem(_reason(exc.status_code), detail, exc.status_code, instance=request.url.path),
            getattr(exc, "headers", None),
        )

    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    @app.exception_handler(OperationalError)
    async def _db_busy(request: Request, exc: OperationalError) -> JSONResponse:
        # SQLite's "database is locked" after its busy timeout, or the database briefly unreachable: the request
        # did nothing (its transaction was rolled back), so the client may simply retry.
        log.warning("database busy or unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        busy = "locked" in str(exc.orig).lower() or "busy" in str(exc.orig).lower()
        detail = (
            "the database is busy with other writes (" + str(exc.orig) + ")"
            if busy
            else f"the database is unavailable ({type(exc.orig).__name__})"
        ) + "; nothing was changed, retry shortly"
        return problem_response(
            problem(
                "Database busy" if busy else "Database unavailable",
                detail,
                503,
                "unavailable",
                instance=request.url.path,
            ),
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    from sqlalchemy.exc import DataError

    @app.exception_handler(DataError)
    async def _bad_value(request: Request, exc: DataError) -> JSONResponse:
        # PostgreSQL refused a value the API let through (a NUL character, a string over its column's width, a
        # number out of range): the client's input, not a bug; nothing was stored.
        log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc.orig)
        return problem_response(
            problem(
                "Invalid value",
                "a value in the request cannot be stored (a NUL "
                "character, a text too long or a number out of range); fix it and retry",
                422,
                "invalid-request",
                instance=request.url.path,
            )
        )

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(request: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("database connection pool exhausted on %s %s", request.method, request.url.path)
        return problem_response(
            problem(
                "Server busy",
                "every database connection is in use; retry shortly",
                503,
                "unavailable",
                instance=request.url.path,
            ),
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            problem(
                "Internal error",
                f"{type(exc).__name__}; this is a bug, please report it with the request that caused it",
                500,
                "internal",
                instance=request.url.path,
            )
        )


def _reason(code: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"
