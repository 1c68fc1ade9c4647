"""``/healthz`` (liveness: the process answers) and ``/readyz`` (readiness: the database, the broker and the blob store
answer, and under ``taskgauge serve`` its embedded worker is running and ready: ``app.supervisor``)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.deps import StateDep
from app.errors import guard_responses, responses
from app.schemas import Health, Readiness
from taskgauge.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, operation_id="health-live", responses=guard_responses())
def healthz() -> Health:
    return Health(status="ok")


def _check_db(state) -> str:
    with state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return "ok"


def _check_broker(state) -> str:
    from workers.celery_app import celery_app

    if state.settings.embedded_broker:
        folder = state.settings.broker_dir / "queue"
        if not folder.is_dir():
            raise OSError(f"broker folder {folder} is missing")
        return "ok (embedded filesystem transport)"
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
    return "ok"


def _check_blobs(state) -> str:
    state.blobs.check()
    return f"ok ({state.blobs.url})"


_SETTING = {"database": "DATABASE_URL", "broker": "BROKER_URL", "blobs": "BLOB_URL (and TASKGAUGE_S3_*)"}


@router.get("/readyz", response_model=Readiness, operation_id="health-ready", responses=responses(503))
async def readyz(state: StateDep) -> Readiness:
    results = {}
    for name, check in (("database", _check_db), ("broker", _check_broker), ("blobs", _check_blobs)):
        try:
            results[name] = await run_in_threadpool(check, state)
        except Exception as exc:  # noqa: BLE001 - report which dependency is down, and why
            raise ServiceUnavailable(
                f"{name} is not reachable: {type(exc).__name__}: {exc}. Check TASKGAUGE_"
                f"{_SETTING[name]} and that the service is up",
                title=f"{name.capitalize()} unavailable",
            ) from None
    from app.supervisor import worker_state

    ok, detail = worker_state()
    if not ok:
        raise ServiceUnavailable(
            f"{detail}; analyses wait in the queue until it is back. Retry shortly",
            title="Worker unavailable",
            retry_after=5,
        )
    return Readiness(status="ok", worker=detail, **results)
