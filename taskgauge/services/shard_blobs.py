"""Blobs of shard results: the plan and the parts of a split kNN (``workers.fanout_knn``).

They follow the dataset blobs' rules (:mod:`taskgauge.blobs`, :func:`taskgauge.services.datasets.published`):

* content addressed (the SHA-256 of deterministic ``.npz`` bytes; arrays only, never pickled), so two analyses of
  the same data may write the same blob and share it;
* published in the transaction that names it in its shard row (``analysis_shards.blob_sha256``): the row and the
  blob appear together, and a blob whose row could not be written (the lease was lost, the analysis ended) is
  removed again;
* deleted once no row names it (:func:`release`, called when the analysis ends, and by the workers' sweeper for
  any analysis that ended without it), under the blob row's lock, so a concurrent publisher of the same bytes
  either sees the delete finished or makes the delete wait and keeps the blob.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from taskgauge import db
from taskgauge.context import Context
from taskgauge.datasets.canonical import write_npz
from taskgauge.services.datasets import gc_blob, published


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` as deterministic ``.npz`` bytes (the same arrays give the same bytes, hence the same blob): those
    of ``np.savez`` with fixed timestamps (:func:`taskgauge.blobs.deterministic_npz`), written in one pass."""
    buf = io.BytesIO()
    write_npz(buf, ((name, np.require(a, requirements="C")) for name, a in arrays.items()))
    return buf.getvalue()


def load_npz(ctx: Context, sha256: str, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a shard blob, or those of them named in ``names`` (the others are not read)
    (``allow_pickle=False``: an object array is refused, never unpickled)."""
    with np.load(ctx.blobs.path(sha256), allow_pickle=False) as z:
        return {name: z[name] for name in z.files if names is None or name in names}


class _Refused(Exception):
    """``bind`` could not name the blob: roll the transaction back."""


def publish(ctx: Context, data: bytes, bind: Callable[[Session, str], str | None | bool]) -> str | None:
    """Publish ``data`` as a blob and name it in a row in one transaction: ``bind(session, sha256)`` writes the
    reference and returns False when it could not (the blob is then removed again unless someone else names it),
    else the SHA-256 the row named before (None if none), which is released once the new one is in place.
    Returns the blob's SHA-256, or None when ``bind`` refused."""
    staged = ctx.blobs.stage(data)
    try:
        with published(ctx, staged) as s:
            before = bind(s, staged.sha256)
            if before is False:
                raise _Refused()  # rolls back; published() removes a blob this call created
    except _Refused:
        return None
    ctx.blobs.discard(staged)
    if isinstance(before, str) and before != staged.sha256:
        gc(ctx, before)  # a re-run shard replaced its earlier result
    return staged.sha256


def gc(ctx: Context, sha256: str) -> bool:
    """Delete the blob when nothing names it (:func:`taskgauge.services.datasets.gc_blob`, the one blob GC)."""
    return gc_blob(ctx, sha256)


def release(ctx: Context, analysis_id: str) -> list[str]:
    """Unname every shard blob of an analysis and delete those no other row names; returns the released ones."""
    S = db.AnalysisShard
    with ctx.sessions() as s, s.begin():
        shas = sorted(
            set(s.scalars(select(S.blob_sha256).where(S.analysis_id == analysis_id, S.blob_sha256.is_not(None))))
        )
        if shas:
            s.execute(
                update(S).where(S.analysis_id == analysis_id, S.blob_sha256.is_not(None)).values(blob_sha256=None)
            )
    for sha in shas:
        gc(ctx, sha)
    return shas


def of_datasets(s: Session, dataset_ids: list[str]) -> list[str]:
    """The shard blobs named by the analyses of these datasets (deleted with them: call :func:`gc` afterwards)."""
    S, A = db.AnalysisShard, db.Analysis
    rows = s.scalars(
        select(S.blob_sha256)
        .join(A, A.id == S.analysis_id)
        .where(A.dataset_id.in_(dataset_ids), S.blob_sha256.is_not(None))
    )
    return sorted({sha for sha in rows if sha is not None})
