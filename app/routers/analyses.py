"""``/analyses``: create (202 + Location), read, list, cancel, and live progress as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from app.deps import Offset, OwnerDep, ReadDep, StateDep
from app.errors import responses
from app.live import AnalysisWatch
from app.schemas import AnalysesPublic, AnalysisCreate, AnalysisPublic
from taskgauge import db
from taskgauge.auth import Principal
from taskgauge.errors import Conflict
from taskgauge.services import analyses as services
from workers.gpu import gpu_queue_consumed

router = APIRouter(prefix="/analyses", tags=["analyses"])

SSE_POLL_S = 0.5  # how often the streams' poller (app.live) reads the followed analyses
SSE_KEEPALIVE_S = 15.0


def snapshots(sessions: sessionmaker, owners: dict[str, str]) -> dict[str, dict]:
    """The SSE poller's read (:class:`app.live.AnalysisWatch`): the analyses' JSON, by id."""
    with sessions() as s:
        return {
            r.id: AnalysisPublic.model_validate(r).model_dump(mode="json") for r in services.get_analyses(s, owners)
        }


@router.post(
    "",
    status_code=202,
    response_model=AnalysisPublic,
    operation_id="analyses-create",
    responses=responses(409, 429, 503),
)
def create_analysis(
    body: AnalysisCreate, request: Request, response: Response, state: StateDep, owner: OwnerDep
) -> AnalysisPublic:
    """Validate the estimators and params, store the analysis (``queued``) and enqueue it for a worker.
    Follow it with ``GET /analyses/{id}`` or ``GET /analyses/{id}/events``.

    ``device: "cuda"`` is refused with 409 when no worker consumes the gpu queue (``TASKGAUGE_GPU_WORKERS``)."""
    if body.device == "cuda" and not gpu_queue_consumed(state.settings):
        raise Conflict(
            "device 'cuda' needs a worker on the gpu queue, and none is running; use device 'auto' or "
            "'cpu', or start `taskgauge worker --queues gpu,default` on a CUDA host (or set "
            "TASKGAUGE_GPU_WORKERS=yes if one is only briefly down)",
            title="No GPU worker",
            kind="no-gpu-worker",
        )
    row = services.create_analysis(
        state,
        owner.owner_id,
        dataset_id=body.dataset_id,
        estimators=body.estimators,
        model_spec_id=body.model_spec_id,
        device=body.device,
    )
    response.headers["Location"] = str(request.url_for("analyses-read", analysis_id=row.id))
    return AnalysisPublic.model_validate(row)


@router.get("", response_model=AnalysesPublic, operation_id="analyses-list", responses=responses())
async def list_analyses(
    read: ReadDep,
    dataset_id: str | None = None,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> AnalysesPublic:
    """Your analyses, newest first; filter by ``dataset_id`` and ``status``."""

    def page(session: Session, owner: Principal) -> AnalysesPublic:
        rows, count = services.list_analyses(
            session, owner.owner_id, dataset_id=dataset_id, status=status, limit=limit, offset=offset
        )
        return AnalysesPublic(
            items=[AnalysisPublic.model_validate(r) for r in rows], count=count, limit=limit, offset=offset
        )

    return await read(page)


@router.get(
    "/{analysis_id}",
    response_model=AnalysisPublic,
    operation_id="analyses-read",
    name="analyses-read",
    responses=responses(),
)
async def read_analysis(analysis_id: str, read: ReadDep) -> AnalysisPublic:
    """Status ``queued|running|succeeded|failed|cancelled``, ``progress`` (0..1), ``stage``, ``error``, ``report_id``."""
    return await read(
        lambda s, owner: AnalysisPublic.model_validate(services.get_analysis(s, owner.owner_id, analysis_id))
    )


@router.post(
    "/{analysis_id}/cancel", response_model=AnalysisPublic, operation_id="analyses-cancel", responses=responses(409)
)
def cancel_analysis(analysis_id: str, state: StateDep, owner: OwnerDep) -> AnalysisPublic:
    """Cancel a queued or running analysis. A running one stops at its estimator's next progress report."""
    return AnalysisPublic.model_validate(services.cancel_analysis(state, owner.owner_id, analysis_id))


@router.get(
    "/{analysis_id}/events",
    operation_id="analyses-events",
    responses={
        **responses(),
        200: {
            "description": "text/event-stream: `progress` events (the analysis JSON), then one "
            "`end` event when it is finished",
            "content": {"text/event-stream": {}},
        },
    },
)
async def analysis_events(analysis_id: str, request: Request, read: ReadDep) -> StreamingResponse:
    """Server-Sent Events: an ``event: progress`` with the analysis JSON whenever it changes, and a final
    ``event: end`` when it is succeeded, failed or cancelled; comments keep the connection alive."""
    owner_id, first = await read(  # 404 before the stream starts
        lambda s, owner: (
            owner.owner_id,
            AnalysisPublic.model_validate(services.get_analysis(s, owner.owner_id, analysis_id)).model_dump(
                mode="json"
            ),
        )
    )
    watch: AnalysisWatch = request.app.state.analysis_watch

    async def stream() -> AsyncIterator[bytes]:
        followed = watch.follow(owner_id, analysis_id, first)
        try:
            yield b"retry: 2000\n\n"
            while True:
                current, changed = followed.snapshot, followed.changed  # the event first: no change is missed
                yield f"event: progress\ndata: {json.dumps(current)}\n\n".encode()
                if current["status"] in db.TERMINAL_STATES:
                    yield f"event: end\ndata: {json.dumps(current)}\n\n".encode()
                    return
                while not changed.is_set():
                    try:
                        await asyncio.wait_for(changed.wait(), SSE_KEEPALIVE_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                if followed.gone:  # deleted with its dataset
                    return
        finally:
            watch.unfollow(analysis_id)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
