"""The FastAPI application factory (docs/deployment.md).

``create_app()`` builds the app; its ``lifespan`` builds the engine, the blob store and the Celery producer
configuration — nothing connects at import time. The schema is never created here: it comes from the
migrations (``taskgauge db upgrade``; ``taskgauge serve`` runs them itself in the embedded default).

Run it with ``taskgauge serve`` (or ``uvicorn --factory app.main:create_app``).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

from app.errors import install_error_handlers
from taskgauge.context import Context
from taskgauge.settings import Settings, get_settings
from workers.celery_app import configure, enqueue_analysis

log = logging.getLogger("taskgauge.api")
API_PREFIX = "/api/v1"


def build_context(settings: Settings) -> Context:
    """The API's service context: its engine and blob store, and Celery configured as a producer."""
    configure(settings)
    return Context.build(settings, enqueue_analysis)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. ``settings`` defaults to :func:`taskgauge.settings.get_settings` (read at startup)."""

    resolved = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_context(resolved)
        from estimators import registry

        registry.all_estimators()  # import the estimators (and torch) now, not inside the first POST /analyses
        app.state.taskgauge = state
        try:
            yield
        finally:
            state.engine.dispose()

    from taskgauge.version import taskgauge_version

    app = FastAPI(
        title="taskgauge",
        version=taskgauge_version(),
        summary="How hard is this supervised task? Intrinsic dimension, label sharpness, inductive-bias "
        "complexity and subspace-training curves, as a service.",
        description=(
            "Upload a dataset (`POST /api/v1/datasets`), start an analysis (`POST /api/v1/analyses`), follow it "
            "(`GET /api/v1/analyses/{id}` or its `/events` stream) and read the report (`GET /api/v1/reports/{id}`).\n\n"
            "Authenticate with `Authorization: Bearer <API key>` (`taskgauge keys create NAME`; the embedded "
            "server writes one to `DATA_DIR/local_api_key`; `taskgauge keys list|revoke`). Every error is an RFC 9457 "
            "`application/problem+json` document whose `detail` names the problem and the fix."
        ),
        lifespan=lifespan,
        docs_url=None,  # /docs is served by app.dashboard.routes from local Swagger UI files (no CDN)
        redoc_url=None,
    )
    install_error_handlers(app)
    from app.security import SecurityMiddleware

    # Trusted hosts, body size, security headers: outside Starlette's own stack, so that its 500s get the headers too.
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityMiddleware(build_stack(), settings=resolved)  # type: ignore[method-assign]

    from app.dashboard import routes as dashboard
    from app.routers import analyses, datasets, health, history, model_specs, reports, schedules, workers

    app.include_router(history.router, prefix=API_PREFIX)  # before datasets: /datasets/{id}/reports with flags
    for mod in (datasets, model_specs, analyses, reports, schedules, workers):
        app.include_router(mod.router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    from fastapi.staticfiles import StaticFiles

    app.mount(dashboard.STATIC_URL, StaticFiles(directory=str(dashboard.STATIC_DIR)), name="dashboard-static")
    return app
