"""One error hierarchy and one problem+json builder (RFC 9457), used by every layer.

Services raise :class:`TaskgaugeError` subclasses (never ``HTTPException``); the API renders them with
:meth:`TaskgaugeError.to_problem` (``app.errors`` installs the handlers), and the worker stores the same document
in a failed analysis' ``error`` through :func:`problem`::

    {"type": "https://taskgauge.dev/problems/not-found", "title": "Not found", "status": 404,
     "detail": "dataset 3f2c… does not exist (or belongs to another key); list yours with GET /api/v1/datasets",
     "instance": "/api/v1/datasets/3f2c…"}

``detail`` always says what was wrong and how to fix it. Extra members (``errors`` for validation problems)
follow RFC 9457 §3.2.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

PROBLEM_BASE = "https://taskgauge.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


ECHO_LIMIT = 80  # characters of a client-supplied value (an id, a name) that a problem document repeats


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as text, cut to ``limit`` characters (marked with "…" and the full length): what a problem
    document may echo (a 20 MB id must not come back in a 20 MB problem document).

    >>> clip("x" * 100), clip("abc")
    ('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… (100 characters)', 'abc')
    """
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def problem(
    title: str, detail: str, status: int, kind: str | None = None, *, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The one problem document builder: ``kind`` names the ``type`` URI (``about:blank`` when None). ``instance``
    (a request path, which carries client-supplied ids) is cut to 200 characters."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = clip(instance, 200)
    body.update(extra)
    return body


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class TaskgaugeError(Exception):
    """Base of every error the API reports. ``kind`` becomes the problem ``type`` URI's last segment."""

    status: int = 500
    title: str = "Internal error"
    kind: str = "internal"

    retry_after: int | None = None  # seconds; the API sends it as a Retry-After header (429, 503)

    def __init__(
        self,
        detail: str,
        *,
        title: str | None = None,
        status: int | None = None,
        kind: str | None = None,
        retry_after: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if retry_after is not None:
            self.retry_after = int(retry_after)
        if title is not None:
            self.title = title
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        return problem(self.title, self.detail, self.status, self.kind, instance=instance, **self.extra)


class BadRequest(TaskgaugeError):
    status, title, kind = 400, "Bad request", "bad-request"


class Unauthorized(TaskgaugeError):
    status, title, kind = 401, "Missing or invalid API key", "unauthorized"


class Forbidden(TaskgaugeError):
    status, title, kind = 403, "Forbidden", "forbidden"


class NotFound(TaskgaugeError):
    status, title, kind = 404, "Not found", "not-found"


class Conflict(TaskgaugeError):
    status, title, kind = 409, "Conflict", "conflict"


class PayloadTooLarge(TaskgaugeError):
    status, title, kind = 413, "Upload too large", "too-large"


class InvalidInput(TaskgaugeError):
    status, title, kind = 422, "Invalid input", "invalid-input"


class TooManyRequests(TaskgaugeError):
    """A per-owner quota or a rate limit; ``retry_after`` says when to try again."""

    status, title, kind = 429, "Too many requests", "too-many-requests"
    retry_after = 60


class ServiceUnavailable(TaskgaugeError):
    status, title, kind = 503, "Service unavailable", "unavailable"


def not_found(what: str, ident: str, hint: str) -> NotFound:
    return NotFound(f"{what} {clip(ident)} does not exist (or belongs to another API key); {hint}")
