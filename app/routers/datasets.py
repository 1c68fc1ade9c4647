"""``/datasets``: streamed upload (413 past the limit), list, read, delete, report history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.deps import Offset, OwnerDep, ReadDep, StateDep
from app.errors import responses
from app.schemas import DatasetPublic, DatasetsPublic, DatasetSummary
from app.uploads import bool_field, check_storage_now, ingest_slot, printable, receive_upload
from taskgauge.auth import Principal
from taskgauge.errors import InvalidInput
from taskgauge.services import datasets as services

router = APIRouter(prefix="/datasets", tags=["datasets"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz, .npy, .csv, .parquet, .zip of image folders, or .jsonl texts",
                        },
                        "name": {"type": "string", "description": "display name (default: the file name)"},
                        "label_column": {"type": "string", "description": "label column of a table / array of a .npz"},
                        "text_column": {
                            "type": "string",
                            "description": "texts: the column of a .csv/.parquet holding the texts",
                        },
                        "resize": {"type": "string", "description": "images: HEIGHTxWIDTH, e.g. 32x32"},
                        "grayscale": {"type": "boolean", "description": "images: convert to one channel"},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    operation_id="datasets-upload",
    openapi_extra=UPLOAD_BODY,
    responses=responses(400, 413, 429, 503),
)
async def upload_dataset(request: Request, state: StateDep, owner: OwnerDep) -> DatasetPublic:
    """Upload a dataset file (multipart field ``file``). It is streamed to disk with the size limit enforced as it
    arrives, hashed, parsed into the canonical form in a memory-limited subprocess (at most
    ``TASKGAUGE_MAX_CONCURRENT_INGESTS`` at once; 503 + Retry-After when they stay busy) and stored
    content-addressed; the dataset row and the blob appear together or not at all. Bad data answers 413/422 with a
    problem document naming the fix."""
    from taskgauge.datasets.ingest import IngestOptions

    settings = state.settings
    upload = await receive_upload(request, max_bytes=settings.max_upload_bytes, tmp_dir=state.upload_tmp)
    try:
        try:
            options = IngestOptions(
                label_column=upload.fields.get("label_column") or None,
                text_column=upload.fields.get("text_column") or None,
                resize=upload.fields.get("resize") or None,
                grayscale=bool_field(upload.fields.get("grayscale")),
                max_expanded_mb=settings.expansion_limit_mb,
                max_classes=settings.MAX_CLASSES,
                max_columns=settings.MAX_COLUMNS,
            )
        except ValidationError as exc:
            raise InvalidInput(
                "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()), title="Invalid ingest options"
            ) from None
        raw_name = upload.fields.get("name") or ""
        if "\x00" in raw_name or "\x00" in (upload.filename or ""):  # PostgreSQL cannot store NUL: refused on both
            raise InvalidInput(
                "the dataset name or file name contains a NUL character; rename it", title="Invalid name"
            )
        filename = printable(upload.filename or "") or "upload"
        name = printable(raw_name).strip() or filename
        await run_in_threadpool(check_storage_now, state, owner.owner_id, upload.size)  # before parsing it
        async with ingest_slot(request, settings.MAX_CONCURRENT_INGESTS, settings.INGEST_QUEUE_S):
            row = await run_in_threadpool(
                services.ingest_and_store,
                state,
                owner.owner_id,
                upload.path,
                options,
                name=name[:300],
                filename=filename,
                sha256=upload.sha256,
                size=upload.size,
            )
        return DatasetPublic.model_validate(row)
    finally:
        upload.cleanup()


@router.get("", response_model=DatasetsPublic, operation_id="datasets-list", responses=responses())
async def list_datasets(
    read: ReadDep, limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Offset = 0
) -> DatasetsPublic:
    """Your datasets, newest first, as summaries (no class or column names: ``GET /datasets/{id}`` has them)."""

    def page(session: Session, owner: Principal) -> DatasetsPublic:
        rows, count = services.list_datasets(session, owner.owner_id, limit=limit, offset=offset)
        return DatasetsPublic(
            items=[DatasetSummary.model_validate(r) for r in rows], count=count, limit=limit, offset=offset
        )

    return await read(page)


@router.get("/{dataset_id}", response_model=DatasetPublic, operation_id="datasets-read", responses=responses())
async def read_dataset(dataset_id: str, read: ReadDep) -> DatasetPublic:
    return await read(
        lambda s, owner: DatasetPublic.model_validate(services.get_dataset(s, owner.owner_id, dataset_id))
    )


@router.delete("/{dataset_id}", status_code=204, operation_id="datasets-delete", responses=responses())
def delete_dataset(dataset_id: str, state: StateDep, owner: OwnerDep) -> Response:
    """Delete a dataset with its analyses and reports; its blob is removed when no other dataset uses it."""
    services.delete_dataset(state, owner.owner_id, dataset_id)
    return Response(status_code=204)


# GET /datasets/{id}/reports (report history with version-change and drift flags) is app/schedules/routes.py.
