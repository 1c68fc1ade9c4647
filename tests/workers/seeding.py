"""Seeding shared by the worker tests that run without Celery."""

from __future__ import annotations

from typing import Any

from taskgauge import db


def seed_analysis(session: Any, **analysis: Any) -> str:
    """An owner, a dataset row (with its blob row) and one analysis of it (``analysis`` sets its fields);
    returns the analysis id. The caller owns the transaction."""
    owner = db.Owner(id=db.new_id(), name="o")
    session.add(owner)
    session.flush()
    session.add(db.Blob(sha256="0" * 64, size=1))
    session.flush()
    ds = db.Dataset(
        id=db.new_id(),
        owner_id=owner.id,
        name="d",
        filename="d.npz",
        sha256="0" * 64,
        size_bytes=1,
        blob_sha256="0" * 64,
        n_samples=10,
        shape=[10, 2],
        meta={},
    )
    session.add(ds)
    session.flush()
    a = db.Analysis(
        id=db.new_id(), owner_id=owner.id, dataset_id=ds.id, estimators={"mle": {}}, queue="default", **analysis
    )
    session.add(a)
    session.flush()
    return a.id
