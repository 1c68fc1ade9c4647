"""Datasets and model specs: store (blob + row in one transaction), read, list, delete, thumbnails."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from taskgauge import db
from taskgauge.blobs import BlobStore, deterministic_npz
from taskgauge.context import Context
from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.errors import InvalidInput, NotFound
from taskgauge.services import get_owned, page

log = logging.getLogger("taskgauge.services")


def get_dataset(session: Session, owner_id: str, dataset_id: str) -> db.Dataset:
    return get_owned(session, db.Dataset, owner_id, dataset_id)


def list_datasets(session: Session, owner_id: str, *, limit: int, offset: int) -> tuple[list[db.Dataset], int]:
    D = db.Dataset
    return page(session, select(D).where(D.owner_id == owner_id), (D.created_at.desc(), D.id),
                limit=limit, offset=offset)


def store_dataset(ctx: Context, owner_id: str, data: CanonicalDataset, *, name: str, filename: str,
                  sha256: str, size: int) -> db.Dataset:
    """Publish the canonical blob and write the dataset row in one transaction: both exist or neither.

    The blob row is upserted first (``ON CONFLICT DO UPDATE`` row-locks it, so a concurrent delete of the last
    dataset using the same blob waits); the file is then renamed into place if missing; the dataset row is
    inserted; commit. If anything fails after the file was created by this call and no blob row survives, the
    file is removed again.
    """
    payload = deterministic_npz(data.to_bytes())
    staged = ctx.blobs.stage(payload)
    created_file = False
    try:
        with ctx.sessions() as s, s.begin():
            from taskgauge.services.quotas import check_storage

            check_storage(s, owner_id, ctx.settings, size)
            s.execute(db.upsert_touch(db.Blob.__table__, s.get_bind().dialect.name,
                                      {"sha256": staged.sha256, "size": staged.size, "created_at": db.utcnow()},
                                      ["sha256"], "size"))
            created_file = ctx.blobs.publish(staged)
            row = db.Dataset(
                id=db.new_id(), owner_id=owner_id, name=name, filename=filename, sha256=sha256,
                size_bytes=size, blob_sha256=staged.sha256, n_samples=data.n_samples, shape=list(data.X.shape),
                n_classes=data.n_classes, classes=data.classes, meta=data.meta, created_at=db.utcnow(),
            )
            s.add(row)
        return row
    except BaseException:
        ctx.blobs.discard(staged)
        if created_file:
            _gc_blob(ctx, staged.sha256)
        raise


def _gc_blob(ctx: Context, sha256: str) -> None:
    """Remove a blob row and file when no dataset references it (under the blob row's lock)."""
    try:
        with ctx.sessions() as s, s.begin():
            blob = s.scalar(select(db.Blob).where(db.Blob.sha256 == sha256).with_for_update())
            if blob is not None:
                refs = s.scalar(select(func.count()).select_from(db.Dataset).where(db.Dataset.blob_sha256 == sha256))
                if refs:
                    return
                s.delete(blob)
                s.flush()
            ctx.blobs.delete(sha256)  # inside the lock: an upload of the same content waits for us
    except Exception:  # noqa: BLE001 - best effort; an orphan file is harmless and re-used by the next upload
        log.warning("could not garbage-collect blob %s", sha256, exc_info=True)


def delete_dataset(ctx: Context, owner_id: str, dataset_id: str) -> None:
    with ctx.sessions() as s, s.begin():
        row = get_dataset(s, owner_id, dataset_id)
        sha = row.blob_sha256
        s.execute(select(db.Blob).where(db.Blob.sha256 == sha).with_for_update())
        s.execute(delete(db.Dataset).where(db.Dataset.id == row.id))
    _gc_blob(ctx, sha)


def load_dataset(blobs: BlobStore, dataset: db.Dataset) -> CanonicalDataset:
    return CanonicalDataset.from_bytes(blobs.read(dataset.blob_sha256))


def sample_png(session: Session, blobs: BlobStore, owner_id: str, dataset_id: str, index: int, *,
               size: int = 96) -> bytes:
    """One sample of an image dataset as a PNG (for the K_F pair thumbnails).

    Values are min–max scaled per sample to 0..255 (images are stored as given, often in [0, 1]); 1 or 3 channels
    become L or RGB; small images are upscaled with nearest-neighbour to ``size`` pixels on the longer side.
    """
    import io

    import numpy as np
    from PIL import Image

    ds = get_dataset(session, owner_id, dataset_id)
    shape = list(ds.shape or [])
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise InvalidInput(f"dataset {dataset_id} is not an image dataset (shape {shape}); no thumbnails")
    if not 0 <= index < shape[0]:
        raise NotFound(f"sample {index} does not exist; indices run from 0 to {shape[0] - 1}")
    data = load_dataset(blobs, ds)
    x = np.asarray(data.X[index], dtype=np.float64)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    x = np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)
    img = (np.nan_to_num(x) * 255).round().astype(np.uint8)
    pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(np.transpose(img, (1, 2, 0)), "RGB")
    scale = max(1, size // max(pil.size))
    if scale > 1:
        pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- model specs


def validate_model_spec(spec: dict[str, Any]) -> dict[str, Any]:
    from estimators.models.spec import parse_model_spec

    parsed = parse_model_spec(spec)  # EstimatorError -> 422 problem
    return parsed.model_dump(mode="json")


def create_model_spec(session: Session, owner_id: str, *, name: str, spec: dict[str, Any]) -> db.ModelSpec:
    row = db.ModelSpec(id=db.new_id(), owner_id=owner_id, name=name, spec=validate_model_spec(spec),
                       created_at=db.utcnow())
    session.add(row)
    session.commit()
    return row


def get_model_spec(session: Session, owner_id: str, spec_id: str) -> db.ModelSpec:
    return get_owned(session, db.ModelSpec, owner_id, spec_id)


def list_model_specs(session: Session, owner_id: str) -> list[db.ModelSpec]:
    M = db.ModelSpec
    return list(session.scalars(select(M).where(M.owner_id == owner_id).order_by(M.created_at.desc())))
