"""Datasets and model specs: store (blob + row in one transaction), read, list, delete, thumbnails."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from estimators.base import ProgressFn, no_progress
from taskgauge import db
from taskgauge.blobs import BlobStore, StagedBlob
from taskgauge.context import Context
from taskgauge.datasets.canonical import CanonicalDataset, read_sample, write_canonical
from taskgauge.errors import InvalidInput, NotFound
from taskgauge.services import get_owned, page

if TYPE_CHECKING:
    from taskgauge.datasets.ingest import IngestOptions

log = logging.getLogger("taskgauge.services")


def get_dataset(session: Session, owner_id: str, dataset_id: str) -> db.Dataset:
    return get_owned(session, db.Dataset, owner_id, dataset_id)


def list_datasets(session: Session, owner_id: str, *, limit: int, offset: int) -> tuple[list[db.Dataset], int]:
    D = db.Dataset
    return page(
        session, select(D).where(D.owner_id == owner_id), (D.created_at.desc(), D.id), limit=limit, offset=offset
    )


T = TypeVar("T")


def stage_from_child(ctx: Context, run: Callable[..., T]) -> tuple[T, StagedBlob]:
    """Run an ingest child that writes a blob's bytes into a fresh temp file of the blob store, and stage that
    file: ``run(path, memory_bytes=…, timeout_s=…, nice=…)`` gets the path and the ingest child's limits from the
    settings, and returns its summary. When the child fails (``IngestError``, a timeout, a crash), its temp file
    is removed: nothing is left behind. Returns the summary and the staged blob (publish it with
    :func:`published`, or discard it)."""
    part = ctx.blobs.new_part()
    try:
        out = run(
            part.path,
            memory_bytes=ctx.settings.ingest_memory_bytes,
            timeout_s=ctx.settings.INGEST_TIMEOUT_S,
            nice=ctx.settings.INGEST_NICE,
        )
        return out, ctx.blobs.stage_file(part)
    except BaseException:
        part.path.unlink(missing_ok=True)
        part.release()
        raise


def ingest_and_store(
    ctx: Context,
    owner_id: str,
    upload_path: Path,
    options: IngestOptions,
    *,
    name: str,
    filename: str,
    sha256: str,
    size: int,
) -> db.Dataset:
    """Parse an uploaded file in a memory-limited subprocess (:mod:`taskgauge.datasets.ingest.isolated`) that
    streams the canonical ``.npz`` into a temp file of the blob store, then publish it with the dataset row
    (:func:`store_staged`). This process holds only the summary, never the data. Raises ``IngestError``."""
    from taskgauge.datasets.ingest.isolated import ingest_isolated

    summary, staged = stage_from_child(
        ctx, lambda path, **limits: ingest_isolated(upload_path, filename, options, path, **limits)
    )
    log.info(
        "ingested %s: shape %s %s, child peak RSS %.0f MB, nice %d",
        filename,
        summary.shape,
        summary.dtype,
        summary.child_peak_rss / 2**20,
        summary.child_nice,
    )
    return store_staged(
        ctx,
        owner_id,
        staged,
        name=name,
        filename=filename[:300],
        sha256=sha256,
        size=size,
        n_samples=summary.n_samples,
        shape=summary.shape,
        n_classes=summary.n_classes,
        classes=summary.classes,
        meta=summary.meta,
    )


def store_dataset(
    ctx: Context, owner_id: str, data: CanonicalDataset, *, name: str, filename: str, sha256: str, size: int
) -> db.Dataset:
    """Store a dataset already in memory (tests, tools): its canonical file is streamed to a staged temp file."""
    part = ctx.blobs.new_part()
    try:
        write_canonical(part.path, data)
        staged = ctx.blobs.stage_file(part)
    except BaseException:
        part.path.unlink(missing_ok=True)
        part.release()
        raise
    return store_staged(
        ctx,
        owner_id,
        staged,
        name=name,
        filename=filename,
        sha256=sha256,
        size=size,
        n_samples=data.n_samples,
        shape=list(data.X.shape),
        n_classes=data.n_classes,
        classes=data.classes,
        meta=data.meta,
    )


def store_staged(
    ctx: Context,
    owner_id: str,
    staged: StagedBlob,
    *,
    name: str,
    filename: str,
    sha256: str,
    size: int,
    n_samples: int,
    shape: list[int],
    n_classes: int | None,
    classes: list[str] | None,
    meta: dict[str, Any],
) -> db.Dataset:
    """Publish the staged canonical blob and write the dataset row in one transaction (:func:`publish_with_row`)."""

    def row() -> db.Dataset:
        return db.Dataset(
            id=db.new_id(),
            owner_id=owner_id,
            name=name,
            filename=filename,
            sha256=sha256,
            size_bytes=size,
            blob_sha256=staged.sha256,
            n_samples=n_samples,
            shape=list(shape),
            n_classes=n_classes,
            classes=classes,
            meta=meta,
            created_at=db.utcnow(),
        )

    return publish_with_row(ctx, owner_id, staged, size, row)


R = TypeVar("R", bound=db.Base)


def publish_with_row(ctx: Context, owner_id: str, staged: StagedBlob, size: int, make_row: Callable[[], R]) -> R:
    """Publish a staged blob and insert the row that references it in one transaction (:func:`published`): both
    exist or neither. ``size`` (the uploaded file's) is checked against the owner's storage quota inside the
    transaction, before the blob is published."""
    from taskgauge.services.quotas import check_storage

    with published(ctx, staged, first=lambda s: check_storage(s, owner_id, ctx.settings, size)) as s:
        row = make_row()
        s.add(row)
    return row


@contextmanager
def published(ctx: Context, staged: StagedBlob, *, first: Callable[[Session], Any] | None = None) -> Iterator[Session]:
    """The one way a blob is published: a transaction in which the staged blob is published and the body writes
    the row(s) naming it; both commit together or neither.

    ``first(session)`` runs first (a quota check). The blob row is then upserted (``ON CONFLICT DO UPDATE``
    row-locks it, so a concurrent delete of the last row using the same blob waits) and the file is moved into
    place if missing; the body runs; commit. If anything raises (in the body too), the staged file is discarded
    and, when this call created the blob's file and no row names it any more, the blob is removed again
    (:func:`gc_blob`); the exception propagates."""
    created_file = False
    try:
        with ctx.sessions() as s, s.begin():
            if first is not None:
                first(s)
            s.execute(
                db.upsert_touch(
                    db.Blob.__table__,
                    s.get_bind().dialect.name,
                    {"sha256": staged.sha256, "size": staged.size, "created_at": db.utcnow()},
                    ["sha256"],
                    "size",
                )
            )
            created_file = ctx.blobs.publish(staged)
            yield s
    except BaseException:
        ctx.blobs.discard(staged)
        if created_file:
            gc_blob(ctx, staged.sha256)
        raise


def gc_blob(ctx: Context, sha256: str) -> bool:
    """Remove a blob row and file when no dataset, model spec or shard (a split kNN's result) references it, under
    the blob row's lock; True when it was removed. The row is inserted-or-locked first, so a publisher of the same
    bytes whose insert is not committed yet makes us wait, and then keeps its blob."""
    try:
        with ctx.sessions() as s, s.begin():
            s.execute(
                db.upsert_touch(
                    db.Blob.__table__,
                    s.get_bind().dialect.name,
                    {"sha256": sha256, "size": 0, "created_at": db.utcnow()},
                    ["sha256"],
                    "sha256",
                )
            )
            for column in (db.Dataset.blob_sha256, db.ModelSpec.weights_sha256, db.AnalysisShard.blob_sha256):
                if s.scalar(select(func.count()).select_from(column.class_).where(column == sha256)):
                    return False
            s.execute(delete(db.Blob).where(db.Blob.sha256 == sha256))
            ctx.blobs.delete(sha256)  # inside the lock: an upload of the same content waits for us
        return True
    except Exception:  # noqa: BLE001 - best effort; an orphan file is harmless and re-used by the next upload
        log.warning("could not garbage-collect blob %s", sha256, exc_info=True)
        return False


def delete_dataset(ctx: Context, owner_id: str, dataset_id: str) -> None:
    from taskgauge.services import shard_blobs

    with ctx.sessions() as s, s.begin():
        row = get_dataset(s, owner_id, dataset_id)
        sha, derived = row.blob_sha256, derived_blobs(row)
        shards = shard_blobs.of_datasets(s, [row.id])  # its analyses' split-kNN results go with their rows
        s.execute(select(db.Blob).where(db.Blob.sha256 == sha).with_for_update())
        s.execute(delete(db.Dataset).where(db.Dataset.id == row.id))
    for blob in (sha, *derived, *shards):  # a cache another dataset of the same texts listed is simply recomputed
        gc_blob(ctx, blob)


def load_dataset(blobs: BlobStore, dataset: db.Dataset) -> CanonicalDataset:
    """The stored dataset, read from its blob file (no extra bytes copy); its ``meta`` is the row's (the blob,
    shared by every upload of the same data, does not hold the file name)."""
    data = CanonicalDataset.load(blobs.path(dataset.blob_sha256))
    if dataset.meta:
        data.meta = dict(dataset.meta)
    return data


def sample_png(
    session: Session, blobs: BlobStore, owner_id: str, dataset_id: str, index: int, *, size: int = 96
) -> bytes:
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
        raise InvalidInput(f"dataset {ds.id} is not an image dataset (shape {shape}); no thumbnails")
    if not 0 <= index < shape[0]:
        raise NotFound(f"sample {index} does not exist; indices run from 0 to {shape[0] - 1}")
    row, _ = read_sample(blobs.path(ds.blob_sha256), index)  # this row's bytes only, never the whole dataset
    x = np.asarray(row, dtype=np.float64)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    x = np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)
    img = (np.nan_to_num(x) * 255).round().astype(np.uint8)
    pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(np.transpose(img, (1, 2, 0)), "RGB")
    scale = max(1, size // max(pil.size))
    if scale > 1:
        pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, "PNG")
    return buf.getvalue()


def embedded(
    ctx: Context,
    dataset: db.Dataset,
    data: CanonicalDataset,
    *,
    device: str = "cpu",
    progress: ProgressFn = no_progress,
) -> CanonicalDataset:
    """A text dataset's embedded form, computed once per (dataset, model) and cached as a derived blob: the
    dataset row's ``meta["embeddings"][model]`` names it, and it is deleted with the dataset. Any other dataset is
    returned as it is."""
    from taskgauge.datasets.texts import DEFAULT_MODEL, embed_dataset, model_key

    if not data.needs_embedding:
        return data
    key = model_key(DEFAULT_MODEL)
    sha = ((dataset.meta or {}).get("embeddings") or {}).get(key)
    if sha and ctx.blobs.exists(sha):
        return CanonicalDataset.from_bytes(ctx.blobs.read(sha))
    out = embed_dataset(data, DEFAULT_MODEL, device=device, progress=progress)
    staged = ctx.blobs.stage(out.to_bytes())
    try:
        with ctx.sessions() as s, s.begin():
            s.execute(
                db.upsert_touch(
                    db.Blob.__table__,
                    s.get_bind().dialect.name,
                    {"sha256": staged.sha256, "size": staged.size, "created_at": db.utcnow()},
                    ["sha256"],
                    "size",
                )
            )
            ctx.blobs.publish(staged)
            row = s.get(db.Dataset, dataset.id, with_for_update=True)
            if row is not None:
                meta = dict(row.meta or {})
                meta["embeddings"] = {**(meta.get("embeddings") or {}), key: staged.sha256}
                row.meta = meta
    except BaseException:
        ctx.blobs.discard(staged)
        raise
    return out


def derived_blobs(dataset: db.Dataset) -> list[str]:
    """The cached embeddings of a dataset (blobs that belong to it alone)."""
    return list(((dataset.meta or {}).get("embeddings") or {}).values())


#: most texts one request returns, and the most characters of each (the dashboard shows examples and pairs)
MAX_TEXTS, MAX_TEXT_CHARS = 50, 2000


def read_texts(
    session: Session, blobs: BlobStore, owner_id: str, dataset_id: str, indices: list[int]
) -> list[dict[str, Any]]:
    """Some texts of a text dataset, by index (each cut at ``MAX_TEXT_CHARS``), e.g. the two sides of a K_F pair."""
    ds = get_dataset(session, owner_id, dataset_id)
    if (ds.meta or {}).get("kind") != "text":
        raise InvalidInput(f"dataset {dataset_id} is not a text dataset; it has no texts")
    if not indices or len(indices) > MAX_TEXTS:
        raise InvalidInput(f"ask for between 1 and {MAX_TEXTS} indices, e.g. ?indices=0,1,2")
    bad = [i for i in indices if not 0 <= i < ds.n_samples]
    if bad:
        raise NotFound(f"sample {bad[0]} does not exist; indices run from 0 to {ds.n_samples - 1}")
    texts = load_dataset(blobs, ds).texts or []
    return [
        {"index": i, "text": texts[i][:MAX_TEXT_CHARS], "truncated": len(texts[i]) > MAX_TEXT_CHARS} for i in indices
    ]
