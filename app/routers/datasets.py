"""``/datasets``: streamed upload (413 past the limit), list, read, delete, report history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from taskgauge.services import datasets as services
from app.deps import Offset, OwnerDep, SessionDep, StateDep
from app.errors import responses
from taskgauge.errors import InvalidInput
from app.schemas import DatasetPublic, DatasetsPublic
from app.uploads import receive_upload

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
                        "file": {"type": "string", "format": "binary",
                                 "description": ".npz, .npy, .csv, .parquet or .zip of image folders"},
                        "name": {"type": "string", "description": "display name (default: the file name)"},
                        "label_column": {"type": "string", "description": "label column of a table / array of a .npz"},
                        "resize": {"type": "string", "description": "images: HEIGHTxWIDTH, e.g. 32x32"},
                        "grayscale": {"type": "boolean", "description": "images: convert to one channel"},
                    },
                }
            }
        },
    }
}


def expansion_limit_mb(max_upload_mb: int) -> int:
    """How far an upload may expand (zip contents, declared array sizes): 64× the upload limit, at most 2 GB."""
    return min(2048, 64 * max_upload_mb)


def _bool(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


@router.post("", status_code=201, response_model=DatasetPublic, operation_id="datasets-upload",
             openapi_extra=UPLOAD_BODY, responses=responses(400, 413))
async def upload_dataset(request: Request, state: StateDep, owner: OwnerDep) -> DatasetPublic:
    """Upload a dataset file (multipart field ``file``). It is streamed to disk with the size limit enforced as it
    arrives, hashed, parsed into the canonical form and stored content-addressed; the dataset row and the blob
    appear together or not at all. Bad data answers 413/422 with a problem document naming the fix."""
    from taskgauge.datasets.ingest import IngestOptions, ingest_file

    upload = await receive_upload(request, max_bytes=state.settings.max_upload_bytes, tmp_dir=state.upload_tmp)
    try:
        try:
            options = IngestOptions(label_column=upload.fields.get("label_column") or None,
                                    resize=upload.fields.get("resize") or None,
                                    grayscale=_bool(upload.fields.get("grayscale")),
                                    max_expanded_mb=expansion_limit_mb(state.settings.MAX_UPLOAD_MB))
        except ValidationError as exc:
            raise InvalidInput("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()),
                               title="Invalid ingest options") from None
        filename = upload.filename or "upload"
        data = await run_in_threadpool(ingest_file, upload.path, filename, options)
        name = (upload.fields.get("name") or "").strip() or filename
        row = await run_in_threadpool(services.store_dataset, state, owner.owner_id, data, name=name[:300],
                                      filename=filename[:300], sha256=upload.sha256, size=upload.size)
        return DatasetPublic.model_validate(row)
    finally:
        upload.cleanup()


@router.get("", response_model=DatasetsPublic, operation_id="datasets-list", responses=responses())
def list_datasets(session: SessionDep, owner: OwnerDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Offset = 0) -> DatasetsPublic:
    """Your datasets, newest first."""
    rows, count = services.list_datasets(session, owner.owner_id, limit=limit, offset=offset)
    return DatasetsPublic(items=[DatasetPublic.model_validate(r) for r in rows], count=count,
                          limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetPublic, operation_id="datasets-read", responses=responses())
def read_dataset(dataset_id: str, session: SessionDep, owner: OwnerDep) -> DatasetPublic:
    return DatasetPublic.model_validate(services.get_dataset(session, owner.owner_id, dataset_id))


@router.delete("/{dataset_id}", status_code=204, operation_id="datasets-delete", responses=responses())
def delete_dataset(dataset_id: str, state: StateDep, owner: OwnerDep) -> Response:
    """Delete a dataset with its analyses and reports; its blob is removed when no other dataset uses it."""
    services.delete_dataset(state, owner.owner_id, dataset_id)
    return Response(status_code=204)


# GET /datasets/{id}/reports (report history with version-change and drift flags) is app/schedules/routes.py.
