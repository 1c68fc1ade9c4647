"""Rate limits on the API's POST routes (issue 15), with slowapi's limiter (``limits`` underneath).

Every ``POST /api/v1/…`` (uploads, analyses, cancels, model specs, schedules) counts against one budget per caller:
the API key's public prefix when the request carries one, else the client address. ``TASKGAUGE_RATE_LIMIT_POST``
sets the budget in slowapi's syntax (default ``300/minute``; ``10/second;1000/hour`` for several windows; empty:
no limit). Over it, the answer is 429 problem+json with ``Retry-After`` (seconds until the window frees a slot).
Reads are not limited (SSE streams, dashboards polling).

The counters live in this process's memory (slowapi's default storage): with several API processes each has its
own, which is the intent of a per-process flood guard; quotas that must hold across processes are the per-owner
ones in the database (:mod:`taskgauge.services.quotas`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import parse_many
from slowapi import Limiter
from starlette.types import ASGIApp, Receive, Scope, Send

from taskgauge.auth import split_key
from taskgauge.errors import problem


def caller_key(scope: Scope) -> str:
    """The API key's public prefix (never the secret), or the client address."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            try:
                return "key:" + split_key(value.decode("latin-1").partition(" ")[2])[0]
            except ValueError:  # not a key: counted by address (made-up keys cannot buy fresh budgets)
                break
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


class PostRateLimit:
    """Pure ASGI middleware (streams pass through untouched): a 429 for POSTs over the budget."""

    def __init__(self, app: ASGIApp, limit: str, prefix: str = "/api/v1/") -> None:
        self.app, self.prefix = app, prefix
        self.items = parse_many(limit)
        self.limiter = Limiter(key_func=lambda: "", storage_uri="memory://")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        key = caller_key(scope)
        strategy = self.limiter.limiter
        for item in self.items:
            if not strategy.hit(item, key, "post"):
                reset, _ = strategy.get_window_stats(item, key, "post")
                retry = max(1, math.ceil(reset - time.time()))
                await _send_problem(
                    send,
                    problem(
                        "Too many requests",
                        f"more than {item} POST requests from this API key (or address); slow down and retry after "
                        f"{retry} s (TASKGAUGE_RATE_LIMIT_POST)",
                        429,
                        "too-many-requests",
                        instance=scope.get("path"),
                        limit=str(item),
                    ),
                    retry,
                )
                return
        await self.app(scope, receive, send)


async def _send_problem(send: Send, body: dict[str, Any], retry_after: int) -> None:
    import json

    from taskgauge.errors import PROBLEM_MEDIA_TYPE

    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(raw)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def install_rate_limit(app: Any, limit: str) -> None:
    if limit.strip():
        app.add_middleware(PostRateLimit, limit=limit.strip())
