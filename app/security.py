"""The web surface's guards, as one pure-ASGI middleware (docs/deployment.md, "Security"):

- **Trusted hosts.** A request whose ``Host`` is not in ``TASKGAUGE_ALLOWED_HOSTS`` gets 400 problem+json (a
  DNS-rebinding page on ``evil.example`` resolving to 127.0.0.1 sends ``Host: evil.example``). The embedded default
  accepts the loopback names only. ``Forwarded``/``X-Forwarded-*``/``X-Real-IP`` are never consulted: no header makes
  a client "local", and nothing in the service depends on where a client is.
- **Body size.** A request body that is not ``multipart/form-data`` (JSON, form-urlencoded, no content type — all
  of which FastAPI/Starlette read whole into memory) larger than ``TASKGAUGE_MAX_JSON_BODY_KB`` gets 413
  problem+json before the application reads it; a chunked body is counted as it arrives and never held past the
  limit. Multipart uploads are limited by the upload code (``TASKGAUGE_MAX_UPLOAD_MB``).
- **Headers on every response** (errors, static files and refusals included): a Content-Security-Policy with
  ``frame-ancestors 'none'``, ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer``; ``Cache-Control: no-store`` on the sign-in routes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from taskgauge.errors import PROBLEM_MEDIA_TYPE, problem
from taskgauge.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Everything from this origin; no inline script anywhere (the dashboard and /docs load their scripts as files).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets style attributes from its bundle; its own assets are still served from this origin only.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
DOCS_PATHS = ("/docs", "/docs-static/")
NO_STORE_PATHS = ("/signin",)
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header, lower case, without port or IPv6 brackets.

    >>> [host_name(h) for h in ("LocalHost:8000", "[::1]:8765", "127.0.0.1", "evil.example:8765")]
    ['localhost', '::1', '127.0.0.1', 'evil.example']
    """
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allowed = settings.allowed_hosts
        self.max_body = settings.max_json_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        send = self._with_headers(send, path)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        if self.allowed is not None:
            name = host_name(headers.get("host", ""))
            if name not in self.allowed:
                shown = name[:80] if name else "(none)"
                await _problem(
                    send,
                    problem(
                        "Untrusted host",
                        f"this server does not answer to the host name {shown!r}; open it as "
                        f"{' or '.join(sorted(self.allowed))}, or add the name to TASKGAUGE_ALLOWED_HOSTS",
                        400,
                        "untrusted-host",
                        instance=path[:200],
                    ),
                )
                return

        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if scope.get("method") in BODY_METHODS and ctype != "multipart/form-data":
            too_large = self._too_large(path)
            length = headers.get("content-length")
            if length is not None:
                if not length.isdigit() or int(length) > self.max_body:
                    await _problem(send, too_large)
                    return
            elif "transfer-encoding" in headers:
                body, ok = await _read_capped(receive, self.max_body)
                if not ok:
                    await _problem(send, too_large)
                    return
                receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _too_large(self, path: str) -> dict[str, Any]:
        kib = self.max_body // 1024
        return problem(
            "Request body too large",
            f"request bodies other than multipart uploads are limited to "
            f"{kib} KiB (TASKGAUGE_MAX_JSON_BODY_KB); send less, or upload data as multipart/form-data "
            "to POST /api/v1/datasets",
            413,
            "too-large",
            instance=path[:200],
        )

    @staticmethod
    def _with_headers(send: Send, path: str) -> Send:
        csp = DOCS_CSP if path == "/docs" or path.startswith(DOCS_PATHS[1]) else CSP
        extra = [
            (b"content-security-policy", csp.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        no_store = path == "/signin" or path.startswith("/signin/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                hdrs = list(message.get("headers", []))
                hdrs += [(k, v) for k, v in extra if k not in names]
                if no_store:
                    hdrs = [(k, v) for k, v in hdrs if k.lower() != b"cache-control"]
                    hdrs += [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
                message["headers"] = hdrs
            await send(message)

        return wrapped


async def _problem(send: Send, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": body["status"],
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(data)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _read_capped(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
