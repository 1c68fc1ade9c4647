"""Model specs: JSON specs, specs with uploaded weights (blob + row in one transaction, :mod:`taskgauge.weights`),
read, list, delete, and what a worker runs with (:func:`runnable`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from taskgauge import db
from taskgauge.context import Context
from taskgauge.errors import InvalidInput
from taskgauge.services import get_owned
from taskgauge.services.datasets import gc_blob, publish_with_row, stage_from_child
from taskgauge.weights import BLOB_REF, HF_ZIP, SAFETENSORS, WeightsForm, hf_spec

log = logging.getLogger("taskgauge.services")


def validate_model_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A client's spec, validated and normalised. A client may name the packaged MiniLM but no directory: an
    uploaded model's ``source: "local"`` + ``path`` form is written by the service only."""
    from estimators.models.spec import PretrainedSpec, parse_model_spec

    parsed = parse_model_spec(spec)  # EstimatorError -> 422 problem
    if isinstance(parsed, PretrainedSpec) and (parsed.source != "minilm" or parsed.path is not None):
        raise InvalidInput(
            'a pretrained spec may name the packaged model only ("source": "minilm"); upload your own model as a '
            "zip of its Hugging Face-style directory (multipart POST /model-specs, `taskgauge upload-model`)",
            title="Invalid model spec",
        )
    return parsed.model_dump(mode="json")


def create_model_spec(session: Session, owner_id: str, *, name: str, spec: dict[str, Any]) -> db.ModelSpec:
    row = db.ModelSpec(
        id=db.new_id(), owner_id=owner_id, name=name, spec=validate_model_spec(spec), created_at=db.utcnow()
    )
    session.add(row)
    session.commit()
    return row


def get_model_spec(session: Session, owner_id: str, spec_id: str) -> db.ModelSpec:
    return get_owned(session, db.ModelSpec, owner_id, spec_id)


def list_model_specs(session: Session, owner_id: str) -> list[db.ModelSpec]:
    M = db.ModelSpec
    return list(session.scalars(select(M).where(M.owner_id == owner_id).order_by(M.created_at.desc())))


def delete_model_spec(ctx: Context, owner_id: str, spec_id: str) -> None:
    """Delete a model spec (its analyses keep their reports and lose the link); its weights blob goes when no
    other spec uses it."""
    with ctx.sessions() as s, s.begin():
        row = get_model_spec(s, owner_id, spec_id)
        sha = row.weights_sha256
        if sha is not None:
            s.execute(select(db.Blob).where(db.Blob.sha256 == sha).with_for_update())
        s.execute(delete(db.ModelSpec).where(db.ModelSpec.id == row.id))
    if sha is not None:
        gc_blob(ctx, sha)


def upload_weights(
    ctx: Context,
    owner_id: str,
    upload_path: Path,
    form: WeightsForm,
    *,
    name: str,
    filename: str,
    size: int,
) -> db.ModelSpec:
    """Check uploaded weights in the memory-limited ingest subprocess, which writes the blob's bytes into a temp
    file of the blob store, then publish the blob with the model spec row (:func:`publish_with_row`): both or
    neither. Raises ``IngestError`` (422: pickles, mismatches, unknown architectures, zips over the limits)."""
    from taskgauge.datasets.ingest.isolated import inspect_weights_isolated

    summary, staged = stage_from_child(
        ctx, lambda path, **limits: inspect_weights_isolated(upload_path, filename, form, path, **limits)
    )
    fmt = summary["format"]
    meta = {"filename": filename[:300], **summary["meta"]}
    try:  # the options were checked in the child; the path names the blob, now that it is known
        spec = hf_spec(summary.get("spec_options"), staged.sha256, filename) if fmt == HF_ZIP else summary["spec"]
    except BaseException:
        ctx.blobs.discard(staged)
        raise
    log.info("model weights %s (%s): %s numbers, blob %s", filename, fmt, meta.get("n_params"), staged.sha256[:12])

    def row() -> db.ModelSpec:
        return db.ModelSpec(
            id=db.new_id(),
            owner_id=owner_id,
            name=name,
            spec=spec,
            weights_sha256=staged.sha256,
            weights_format=fmt,
            weights_size_bytes=size,
            weights_meta=meta,
            created_at=db.utcnow(),
        )

    return publish_with_row(ctx, owner_id, staged, size, row)


# ------------------------------------------------------------------------------------------------ running


def weights_ref(row: db.ModelSpec | None) -> str | None:
    """What stands for an arch spec's weights while a request is validated (no file is needed for that)."""
    if row is None or row.weights_format != SAFETENSORS or row.weights_sha256 is None:
        return None
    return BLOB_REF + row.weights_sha256


def check_weights_fit(row: db.ModelSpec | None, input_shape: tuple[int, ...] | None) -> None:
    """Refuse (EstimatorError, 422) an analysis whose data the uploaded arch weights cannot take: the network
    built for the dataset's per-sample shape must have exactly the uploaded tensors' shapes."""
    from estimators.base import EstimatorError
    from estimators.models.pretrained import spec_state_shapes

    if row is None or row.weights_format != SAFETENSORS or not input_shape:
        return
    meta = row.weights_meta or {}
    stored = {k: tuple(v) for k, v in (meta.get("tensors") or {}).items()}
    try:
        expected = spec_state_shapes(row.spec, input_shape, int(meta["n_classes"]))
    except EstimatorError as exc:
        raise EstimatorError(f"model spec {row.id}: {exc}") from None
    if expected != stored:
        raise EstimatorError(
            f"model spec {row.id} holds weights for per-sample input shape {meta.get('input_shape')}, which this "
            f"dataset's shape {list(input_shape)} does not fit (the network would have other tensor shapes); "
            "analyse data of that shape, or upload weights trained on this data"
        )


@dataclass(frozen=True)
class Runnable:
    """A stored model spec as a worker runs it: the spec with an uploaded directory's local path, and the local
    path of an arch spec's weights."""

    spec: dict[str, Any] | None
    weights: str | None = None


def runnable(ctx: Context, row: db.ModelSpec | None) -> Runnable:
    """The spec of ``row`` with its uploaded weights brought to this host (:func:`taskgauge.weights.local_weights`,
    once per host and process)."""
    from taskgauge.weights import local_weights

    if row is None:
        return Runnable(None)
    if row.weights_sha256 is None or row.weights_format is None:
        return Runnable(dict(row.spec))
    path = local_weights(
        ctx.blobs,
        Path(ctx.settings.DATA_DIR) / "models",
        row.weights_sha256,
        row.weights_format,
        max_expanded_mb=ctx.settings.expansion_limit_mb,
    )
    if row.weights_format == HF_ZIP:
        return Runnable({**row.spec, "path": str(path)})
    return Runnable(dict(row.spec), weights=str(path))
