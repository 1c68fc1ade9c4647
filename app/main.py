"""The FastAPI application factory (docs/deployment.md).

``create_app()`` builds the app; its ``lifespan`` builds the engine, the blob store and the Celery producer
configuration — nothing connects at import time. The schema is never created here: it comes from the
migrations (``taskgauge db upgrade``; ``taskgauge serve`` runs them itself in the embedded default).

Run it with ``taskgauge serve`` (or ``uvicorn --factory app.main:create_app``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from app.errors import install_error_handlers
from app.live import AnalysisWatch
from taskgauge.context import Context
from taskgauge.settings import Settings, get_settings
from workers.celery_app import configure, enqueue_analysis

log = logging.getLogger("taskgauge.api")
API_PREFIX = "/api/v1"
API_THREADS = 128  # threads for sync routes (taskgauge.db sizes the SQLite pool to match)


def build_context(settings: Settings) -> Context:
    """The API's service context: its engine and blob store, and Celery configured as a producer."""
    configure(settings)
    return Context.build(settings, enqueue_analysis)


def start_sweeper(state: Context) -> threading.Event:
    """The stale-analysis sweeper (``workers.leases.sweep_stale``) also runs in the API process, so an analysis
    left ``running`` by a worker that died with its sweeper (the embedded worker, or the last worker) is re-queued
    or, out of attempts, failed. Returns the event that stops it."""
    from workers.leases import sweep_stale

    stop = threading.Event()
    interval = max(1.0, state.settings.LEASE_S / 3)

    def loop() -> None:
        while not stop.wait(interval):
            try:
                sweep_stale(state.sessions, state.settings, state.enqueue)
            except Exception:  # noqa: BLE001 - the database or broker may be briefly away; next round
                log.warning("stale-analysis sweep failed", exc_info=True)

    threading.Thread(target=loop, name="taskgauge-api-sweeper", daemon=True).start()
    return stop


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. ``settings`` defaults to :func:`taskgauge.settings.get_settings` (read at startup)."""

    resolved = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        # Sync routes run in anyio's thread pool (default 40 threads): writers waiting for SQLite's write lock
        # must not leave readers (and SSE polls) without a thread.
        anyio.to_thread.current_default_thread_limiter().total_tokens = API_THREADS
        state = build_context(resolved)
        from app.uploads import sweep_uploads

        sweep_uploads(state.upload_tmp)  # temp files of uploads whose process died (the blob store sweeps its own)
        from estimators import registry

        registry.all_estimators()  # import the estimators (and torch) now, not inside the first POST /analyses
        app.state.taskgauge = state
        from app.routers import analyses

        app.state.analysis_watch = AnalysisWatch(partial(analyses.snapshots, state.sessions), analyses.SSE_POLL_S)
        stop_sweeper = start_sweeper(state)
        try:
            yield
        finally:
            stop_sweeper.set()
            await app.state.analysis_watch.close()
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
    from app.ratelimit import install_rate_limit

    install_rate_limit(app, resolved.RATE_LIMIT_POST)

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
