"""Dashboard pages (docs/dashboard.md), served by the API at ``/``.

The pages are Jinja2 templates; their data comes from the REST API (``/api/v1``), fetched by a small script
(``static/app.js``) with the API key the user keeps in the browser's localStorage. Plots are SVG drawn by
``static/plots.js`` — no CDN, nothing downloaded, so the dashboard works offline.

The sign-in page offers the embedded default's local key only when the server runs in embedded mode (SQLite, no
broker configured) *and* both the server and the browser are on the loopback interface.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from taskgauge.version import taskgauge_version

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_URL = "/dashboard-static"  # the app factory mounts STATIC_DIR here (StaticFiles)

templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


def _render(request: Request, template: str, page: str, **data: str) -> HTMLResponse:
    ctx = {"page": page, "data": data, "static_url": STATIC_URL, "version": taskgauge_version()}
    return templates.TemplateResponse(request, template, ctx)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_key_for(request: Request) -> str | None:
    """The embedded default's local key, or None unless the server is embedded and server+client are loopback."""
    from app.dashboard import hooks

    if not hooks.is_embedded():
        return None
    server = request.scope.get("server") or (None, None)
    client = request.client.host if request.client else None
    if not (_is_loopback(server[0]) and _is_loopback(client)):
        return None
    return hooks.read_local_key()


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    return _render(request, "index.html", "index")


@router.get("/signin", response_class=HTMLResponse)
def signin(request: Request) -> HTMLResponse:
    ctx = {"page": "signin", "data": {}, "static_url": STATIC_URL, "version": taskgauge_version(),
           "local_key": local_key_for(request)}
    return templates.TemplateResponse(request, "signin.html", ctx)


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
