"""``/model-specs``: JSON model specs (docs/methods.md §4), validated; and uploaded weights (issue 16) — safetensors
for an arch spec, or a zip of a Hugging Face-style directory — checked and stored with the spec. Never code, never
pickles."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from python_multipart.multipart import parse_options_header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.deps import OwnerDep, ReadDep, StateDep
from app.errors import responses
from app.schemas import ModelSpecCreate, ModelSpecPublic, ModelSpecsPublic
from app.uploads import check_storage_now, ingest_slot, printable, receive_upload
from taskgauge.auth import Principal
from taskgauge.context import Context
from taskgauge.errors import InvalidInput
from taskgauge.services import model_specs as services

router = APIRouter(prefix="/model-specs", tags=["model-specs"])

CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ModelSpecCreate.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".safetensors weights of an arch spec, or a .zip of a Hugging Face-style "
                            "model directory (config.json, model.safetensors, tokenizer files). Pickles (.bin, .pt, "
                            ".pth, .ckpt) are refused",
                        },
                        "name": {"type": "string", "description": "display name (default: the file name)"},
                        "spec": {
                            "type": "string",
                            "description": 'JSON. safetensors: the arch spec, e.g. {"arch": "mlp", "hidden": [64]}; '
                            'zip: options of the pretrained spec, e.g. {"train_blocks": 2, "max_length": 128}',
                        },
                        "input_shape": {
                            "type": "string",
                            "description": "safetensors: per-sample shape the network takes, e.g. 784 or 1,28,28",
                        },
                        "n_classes": {
                            "type": "integer",
                            "description": "safetensors: outputs of the network (default: read from the weights)",
                        },
                    },
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=ModelSpecPublic,
    operation_id="model-specs-create",
    openapi_extra=CREATE_BODY,
    responses=responses(400, 413, 429, 503),
)
async def create_model_spec(request: Request, state: StateDep, owner: OwnerDep) -> ModelSpecPublic:
    """Store a model spec.

    * JSON: a validated spec, e.g. ``{"name": "mlp", "spec": {"arch": "mlp", "hidden": [200, 200]}}``.
    * multipart/form-data with a ``file``: uploaded weights. ``.safetensors`` with ``spec`` (an arch spec as JSON)
      and ``input_shape`` (``n_classes`` is read from the weights unless given): every tensor name and shape must
      match the spec's network. ``.zip`` of a Hugging Face-style directory (``config.json``, ``model.safetensors``,
      tokenizer files), loaded offline with ``transformers``; ``spec`` may set the pretrained spec's options. The
      file is streamed with the upload limit (413), checked in a memory-limited subprocess and stored
      content-addressed with the spec row, both or neither. Pickles, shape mismatches, unknown architectures and
      zips over the limits answer 422 and nothing is kept.
    """
    ctype, _ = parse_options_header(request.headers.get("content-type", ""))
    if ctype == b"multipart/form-data":
        row = await _upload(request, state, owner.owner_id)
    else:
        try:
            body = ModelSpecCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
            ) from None
        row = await run_in_threadpool(_create, state, owner.owner_id, body)
    return ModelSpecPublic.model_validate(row)


def _create(state: Context, owner_id: str, body: ModelSpecCreate) -> Any:
    with state.sessions() as session:
        session.begin()  # a writing transaction (BEGIN IMMEDIATE on SQLite)
        return services.create_model_spec(session, owner_id, name=body.name, spec=body.spec)


async def _upload(request: Request, state: Context, owner_id: str) -> Any:
    from taskgauge.weights import WeightsForm, precheck, weights_format

    settings = state.settings
    upload = await receive_upload(request, max_bytes=settings.max_upload_bytes, tmp_dir=state.upload_tmp)
    try:
        fields = upload.fields
        raw_name = fields.get("name") or ""
        if "\x00" in raw_name or "\x00" in (upload.filename or ""):
            raise InvalidInput("the model name or file name contains a NUL character; rename it", title="Invalid name")
        filename = printable(upload.filename or "") or "upload"
        weights_format(filename)  # pickles and unknown file types are refused by name before anything is parsed
        spec: Any = None
        if (fields.get("spec") or "").strip():
            try:
                spec = json.loads(fields["spec"])
            except ValueError as exc:
                raise InvalidInput(
                    f"the form field spec is not valid JSON ({exc})", title="Invalid model spec"
                ) from None
            if not isinstance(spec, dict):
                raise InvalidInput(
                    'the form field spec must be a JSON object, e.g. {"arch": "mlp", "hidden": [200, 200]}',
                    title="Invalid model spec",
                )
            if "\x00" in json.dumps(spec):
                raise InvalidInput("the spec contains a NUL character", title="Invalid model spec")
        try:
            form = WeightsForm(
                spec=spec,
                input_shape=fields.get("input_shape") or None,
                n_classes=(fields.get("n_classes") or "").strip() or None,
                max_expanded_mb=settings.expansion_limit_mb,
                max_params=settings.MAX_MODEL_PARAMS,
            )
        except ValidationError as exc:
            raise InvalidInput(
                "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors()
                ),
                title="Invalid upload options",
            ) from None
        precheck(filename, form)  # the spec and the fields the file's form needs, before the file is parsed
        name = printable(raw_name).strip() or filename
        await run_in_threadpool(check_storage_now, state, owner_id, upload.size)  # before parsing it
        async with ingest_slot(request, settings.MAX_CONCURRENT_INGESTS, settings.INGEST_QUEUE_S):
            return await run_in_threadpool(
                services.upload_weights,
                state,
                owner_id,
                upload.path,
                form,
                name=name[:300],
                filename=filename,
                size=upload.size,
            )
    finally:
        upload.cleanup()


@router.get("", response_model=ModelSpecsPublic, operation_id="model-specs-list", responses=responses())
async def list_model_specs(read: ReadDep) -> ModelSpecsPublic:
    def specs(session: Session, owner: Principal) -> ModelSpecsPublic:
        rows = services.list_model_specs(session, owner.owner_id)
        return ModelSpecsPublic(items=[ModelSpecPublic.model_validate(r) for r in rows], count=len(rows))

    return await read(specs)


@router.get("/{spec_id}", response_model=ModelSpecPublic, operation_id="model-specs-read", responses=responses())
async def read_model_spec(spec_id: str, read: ReadDep) -> ModelSpecPublic:
    return await read(
        lambda s, owner: ModelSpecPublic.model_validate(services.get_model_spec(s, owner.owner_id, spec_id))
    )


@router.delete("/{spec_id}", status_code=204, operation_id="model-specs-delete", responses=responses())
def delete_model_spec(spec_id: str, state: StateDep, owner: OwnerDep) -> Response:
    """Delete a model spec; its weights blob is removed when no other spec uses it. Analyses that used it keep
    their reports."""
    services.delete_model_spec(state, owner.owner_id, spec_id)
    return Response(status_code=204)
