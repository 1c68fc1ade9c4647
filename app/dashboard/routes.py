"""Dashboard pages (docs/dashboard.md), served by the API at ``/``.

The pages are Jinja2 templates; their data comes from the REST API (``/api/v1``), fetched by a small script
(``static/app.js``) with the API key the user keeps in the browser's localStorage. Plots are SVG drawn by
``static/plots.js`` — no CDN, nothing downloaded, so the dashboard works offline.

Sign-in (docs/dashboard.md): no page ever contains a key. A user pastes a key into the sign-in form, or, in the
embedded default, opens the one-time link ``taskgauge serve`` prints on its console
(``/signin#token=…``; the token sits in the fragment, so it reaches neither the server's log nor a Referer). The
page's script posts the token to ``POST /signin/token``, which accepts it once and answers with a new API key of the
``local`` owner (``taskgauge keys list|revoke`` see it) for the page to keep. The token is known only to whoever
reads that console; where the browser connects from, and any proxy header, play no part. ``next`` is cut to a path
on this origin (:func:`safe_next`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from taskgauge.errors import NotFound, Unauthorized
from taskgauge.version import taskgauge_version

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_URL = "/dashboard-static"  # the app factory mounts STATIC_DIR here (StaticFiles)

templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


def _render(request: Request, template: str, page: str, **data: str) -> HTMLResponse:
    ctx = {"page": page, "data": data, "static_url": STATIC_URL, "version": taskgauge_version()}
    return templates.TemplateResponse(request, template, ctx)


def safe_next(value: str | None) -> str:
    r"""Where the sign-in page may send the browser afterwards: a path on this origin, else ``/``.

    Refused: anything with a scheme or host (``https://evil``, ``//evil``), a backslash (browsers read ``/\evil``
    as ``//evil``), control characters or whitespace, and overlong values.

    >>> [safe_next(v) for v in ("/datasets/x?a=1#b", "//evil.example/p", "/\\evil", "https://evil", "javascript:x",
    ...                         "/%2F%2Fevil", " /x", None)]
    ['/datasets/x?a=1#b', '/', '/', '/', '/', '/%2F%2Fevil', '/', '/']
    """
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return "/"
    return value


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    return _render(request, "index.html", "index")


@router.get("/signin", response_class=HTMLResponse)
def signin(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002 - the query name
    from app.dashboard import hooks

    return _render(request, "signin.html", "signin", next=safe_next(next), embedded="1" if hooks.is_embedded() else "")


class SigninToken(BaseModel):
    token: str = Field(max_length=200)


@router.post("/signin/token")
def signin_token(body: SigninToken, request: Request) -> JSONResponse:
    """Trade the one-time sign-in token (printed by ``taskgauge serve``) for a new API key of the local owner."""
    from app.dashboard import hooks

    key = hooks.redeem_signin_token(request.app.state.taskgauge, body.token)
    if key is None:
        raise Unauthorized(
            "this sign-in link was already used, has expired, or is not the latest one; run "
            "`taskgauge keys signin-url` on the server's machine for a new one, or paste an API key",
            title="Sign-in link not valid",
            kind="bad-signin-token",
        )
    return JSONResponse({"key": key, "owner": "local"}, headers={"Cache-Control": "no-store"})


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(request: Request, dataset_id: str) -> HTMLResponse:
    return _render(request, "dataset.html", "dataset", id=dataset_id)


@router.get("/analyses/{analysis_id}", response_class=HTMLResponse)
def analysis_page(request: Request, analysis_id: str) -> HTMLResponse:
    return _render(request, "analysis.html", "analysis", id=analysis_id)


@router.get("/reports/{report_id}", response_class=HTMLResponse)
def report_page(request: Request, report_id: str) -> HTMLResponse:
    return _render(request, "report.html", "report", id=report_id)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> HTMLResponse:
    return _render(request, "compare.html", "compare")


@router.get("/dashboard", include_in_schema=False)
def dashboard_alias() -> RedirectResponse:
    return RedirectResponse("/")


# ---------------------------------------------------------------------------------------------- /docs, offline
SWAGGER_FILES = {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"}


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    """Swagger UI from the ``swagger-ui-bundle-v2`` package's files, served by this server (works offline; no
    third-party script on this origin)."""
    return templates.TemplateResponse(request, "docs.html", {"static_url": STATIC_URL, "version": taskgauge_version()})


@router.get("/docs-static/{name}")
def docs_asset(name: str) -> FileResponse:
    if name not in SWAGGER_FILES:
        raise NotFound("no such documentation asset")
    from swagger_ui_bundle import swagger_ui_path

    return FileResponse(str(swagger_ui_path / name), headers={"Cache-Control": "public, max-age=86400"})
