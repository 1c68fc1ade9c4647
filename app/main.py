"""The FastAPI application factory (DESIGN.md §6).

``create_app()`` builds the app; its ``lifespan`` builds the engine, the blob store and the Celery producer
configuration — nothing connects at import time. The schema is never created here: it comes from the
migrations (``taskgauge db upgrade``; ``taskgauge serve`` runs them itself in the embedded default).

Run it with ``taskgauge serve`` (or ``uvicorn --factory app.main:create_app``).
"""

from __future__ import annotations

import importlib
import logging
import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

from app.deps import AppState
from app.errors import install_error_handlers
from app.settings import Settings, get_settings
from workers import db
from workers.blobstore import BlobStore
from workers.celery_app import WorkerConfig, configure, load_extra_estimator_modules

log = logging.getLogger("taskgauge.api")
API_PREFIX = "/api/v1"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def worker_config(settings: Settings) -> WorkerConfig:
    """The worker/producer configuration derived from the settings.

    Three reliability knobs are read from the environment directly (not in ``app.settings``):
    ``TASKGAUGE_LEASE_S`` (default 60: a running analysis whose worker stopped heartbeating this long is re-queued),
    ``TASKGAUGE_HEARTBEAT_S`` (default 5) and ``TASKGAUGE_VISIBILITY_TIMEOUT_S`` (Redis, default 21600).
    """
    return WorkerConfig(
        database_url=settings.DATABASE_URL,
        data_dir=settings.DATA_DIR,
        broker_url=settings.BROKER_URL.strip(),
        device=settings.DEVICE,
        # Like the CLI's local mode: only an explicitly set budget overrides the estimators' own default.
        memory_budget_mb=settings.MEMORY_BUDGET_MB if "MEMORY_BUDGET_MB" in settings.model_fields_set else None,
        visibility_timeout_s=int(_env_float("TASKGAUGE_VISIBILITY_TIMEOUT_S", 6 * 3600)),
        lease_s=_env_float("TASKGAUGE_LEASE_S", 60.0),
        heartbeat_s=_env_float("TASKGAUGE_HEARTBEAT_S", 5.0),
    )


def build_state(settings: Settings) -> AppState:
    engine = db.make_engine(settings.DATABASE_URL)
    cfg = worker_config(settings)
    configure(cfg)
    return AppState(settings=settings, engine=engine, sessions=db.make_session_factory(engine),
                    blobs=BlobStore(cfg.blob_dir).ensure(), worker_config=cfg)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. ``settings`` defaults to :func:`app.settings.get_settings` (read at startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings or get_settings())
        load_extra_estimator_modules()
        from estimators import registry

        registry.all_estimators()  # import the estimators (and torch) now, not inside the first POST /analyses
        app.state.taskgauge = state
        try:
            yield
        finally:
            state.engine.dispose()

    from workers.pipeline import taskgauge_version

    app = FastAPI(
        title="taskgauge",
        version=taskgauge_version(),
        summary="How hard is this supervised task? Intrinsic dimension, label sharpness, inductive-bias "
        "complexity and subspace-training curves, as a service.",
        description=(
            "Upload a dataset (`POST /api/v1/datasets`), start an analysis (`POST /api/v1/analyses`), follow it "
            "(`GET /api/v1/analyses/{id}` or its `/events` stream) and read the report (`GET /api/v1/reports/{id}`).\n\n"
            "Authenticate with `Authorization: Bearer <API key>` (`taskgauge keys create NAME`; the embedded "
            "server writes one to `DATA_DIR/local_api_key`). Every error is an RFC 9457 `application/problem+json` "
            "document whose `detail` names the problem and the fix."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)

    from app.routers import analyses, datasets, health, model_specs, reports, schedules

    app.include_router(importlib.import_module("app.schedules.routes").router)  # issue 7: history with flags, sample PNGs
    for mod in (datasets, model_specs, analyses, reports, schedules):
        app.include_router(mod.router, prefix=API_PREFIX)
    app.include_router(health.router)
    _mount_dashboard(app)
    return app


def _include_optional(app: FastAPI, module: str) -> None:
    """Include ``module.router`` (already prefixed) when the module is installed."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    app.include_router(mod.router)


def _mount_dashboard(app: FastAPI) -> None:
    """The dashboard (``app.dashboard``, another module) at ``/``, when it is installed."""
    try:
        routes = importlib.import_module("app.dashboard.routes")
    except ModuleNotFoundError as exc:
        if exc.name not in ("app.dashboard", "app.dashboard.routes"):
            raise
        return
    from fastapi.staticfiles import StaticFiles

    app.include_router(routes.router)
    app.mount(routes.STATIC_URL, StaticFiles(directory=str(routes.STATIC_DIR)), name="dashboard-static")
