"""Analyses: the one way an analysis is created (API and schedule scan alike), read, listed and cancelled."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from estimators import registry
from taskgauge import db
from taskgauge.context import Context
from taskgauge.errors import Conflict, ServiceUnavailable, problem
from taskgauge.pipeline import DataFacts, Limits, validate_requests
from taskgauge.services import get_owned, page
from taskgauge.services.datasets import get_dataset
from taskgauge.services.model_specs import check_weights_fit, get_model_spec, weights_ref

log = logging.getLogger("taskgauge.services")

DEFAULT_QUEUE = "default"
GPU_QUEUE = "gpu"


def queue_for(device: str) -> str:
    """``cuda`` analyses go to the ``gpu`` queue (CUDA workers consume it); everything else to ``default``."""
    return GPU_QUEUE if device == "cuda" else DEFAULT_QUEUE


def get_analysis(session: Session, owner_id: str, analysis_id: str) -> db.Analysis:
    return get_owned(session, db.Analysis, owner_id, analysis_id)


def get_analyses(session: Session, owners: dict[str, str]) -> list[db.Analysis]:
    """The analyses of ``owners`` (``{analysis_id: owner_id}``) that exist and belong to that owner, read in one
    query per 500 ids (the SSE streams' poller, ``app.live``)."""
    A = db.Analysis
    ids = list(owners)
    rows: list[db.Analysis] = []
    for i in range(0, len(ids), 500):
        rows += session.scalars(select(A).where(A.id.in_(ids[i : i + 500])))
    return [r for r in rows if owners[r.id] == r.owner_id]


def list_analyses(
    session: Session, owner_id: str, *, dataset_id: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[db.Analysis], int]:
    A = db.Analysis
    q = select(A).where(A.owner_id == owner_id)
    if dataset_id:
        q = q.where(A.dataset_id == dataset_id)
    if status:
        q = q.where(A.status == status)
    return page(session, q, (A.created_at.desc(), A.id), limit=limit, offset=offset)


def check_requests(
    requests: dict[str, Any] | None,
    dataset: db.Dataset,
    spec: db.ModelSpec | None,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Validate estimator names and params against the registry and the dataset row (labels, sample count, the
    size of the model on its shape, whether uploaded weights fit its shape) without loading the data; returns the
    normalised request ``{name: params}``."""
    shape = list(dataset.shape or [])
    facts = DataFacts(
        has_labels=dataset.n_classes is not None,
        n_samples=dataset.n_samples,
        input_shape=tuple(int(s) for s in shape[1:]) or None,
        n_classes=dataset.n_classes,
    )
    normalised = validate_requests(
        requests,
        facts,
        model_spec=spec.spec if spec is not None else None,
        model_weights=weights_ref(spec),
        limits=limits,
    )
    if any(registry.get(name).needs_model and "model" not in (params or {}) for name, params in normalised.items()):
        check_weights_fit(spec, facts.input_shape)
    return normalised


def new_analysis(
    *,
    owner_id: str,
    dataset_id: str,
    requests: dict[str, Any],
    model_spec_id: str | None,
    device: str = "auto",
    schedule_id: str | None = None,
) -> db.Analysis:
    """The one constructor of an analysis row (``queued``, its queue chosen from the device)."""
    now = db.utcnow()
    return db.Analysis(
        id=db.new_id(),
        owner_id=owner_id,
        dataset_id=dataset_id,
        model_spec_id=model_spec_id,
        schedule_id=schedule_id,
        estimators=requests,
        device=device,
        queue=queue_for(device),
        status=db.QUEUED,
        progress=0.0,
        stage="queued",
        attempts=0,
        created_at=now,
        updated_at=now,
    )


def enqueue(ctx: Context, rows: Iterable[db.Analysis]) -> None:
    """Send committed analyses to the workers. One the broker refuses is marked ``failed`` (503 problem) rather
    than left ``queued``; the first refusal is raised as :class:`ServiceUnavailable` after all were tried."""
    refused: Exception | None = None
    for row in rows:
        try:
            ctx.enqueue(row.id, row.queue or DEFAULT_QUEUE)
        except Exception as exc:  # noqa: BLE001 - broker down: say so, never leave the analysis queued forever
            log.exception("enqueue of analysis %s failed", row.id)
            refused = refused or exc
            with ctx.sessions() as s, s.begin():
                s.execute(
                    update(db.Analysis)
                    .where(db.Analysis.id == row.id)
                    .values(
                        status=db.FAILED,
                        finished_at=db.utcnow(),
                        stage="failed",
                        error=problem(
                            "Broker unavailable",
                            f"could not enqueue the analysis ({type(exc).__name__}); "
                            "retry when the broker is back (GET /readyz)",
                            503,
                            "unavailable",
                        ),
                    )
                )
    if refused is not None:
        raise ServiceUnavailable(
            f"the task broker is unreachable ({type(refused).__name__}); the analysis was not queued. Check GET "
            "/readyz and retry",
            title="Broker unavailable",
        ) from None


def create_analysis(
    ctx: Context,
    owner_id: str,
    *,
    dataset_id: str,
    estimators: dict[str, Any] | None,
    model_spec_id: str | None,
    device: str = "auto",
) -> db.Analysis:
    """Validate, store (``queued``) and enqueue an analysis; enqueued only after the commit."""
    from taskgauge.services.quotas import check_active_analyses

    with ctx.sessions() as s, s.begin():
        dataset = get_dataset(s, owner_id, dataset_id)
        check_active_analyses(s, owner_id, ctx.settings)
        spec = get_model_spec(s, owner_id, model_spec_id) if model_spec_id else None
        row = new_analysis(
            owner_id=owner_id,
            dataset_id=dataset.id,
            model_spec_id=model_spec_id,
            requests=check_requests(estimators, dataset, spec, Limits.from_settings(ctx.settings)),
            device=device,
        )
        s.add(row)
    enqueue(ctx, [row])
    return row


def cancel_analysis(ctx: Context, owner_id: str, analysis_id: str) -> db.Analysis:
    A = db.Analysis
    with ctx.sessions() as s, s.begin():
        row = get_analysis(s, owner_id, analysis_id)
        res = s.execute(
            update(A)
            .where(A.id == row.id, A.status.in_([db.QUEUED, db.RUNNING]))
            .values(status=db.CANCELLED, finished_at=db.utcnow(), stage="cancelled")
        )
        if res.rowcount != 1:
            raise Conflict(
                f"analysis {analysis_id} is already {row.status}; only queued or running analyses can be cancelled",
                title="Analysis already finished",
            )
    with ctx.sessions() as s:
        return get_analysis(s, owner_id, analysis_id)


def store_result(session: Session, analysis_id: str, name: str, entry: dict[str, Any]) -> None:
    """One estimator's result entry of an analysis (insert-or-ignore: a re-run or a second shard adds nothing)."""
    session.execute(
        db.insert_ignore(
            db.AnalysisResult.__table__,
            session.get_bind().dialect.name,
            {
                "id": db.new_id(),
                "analysis_id": analysis_id,
                "estimator": name,
                "version": str(entry.get("version", "")),
                "entry": entry,
                "created_at": db.utcnow(),
            },
            ["analysis_id", "estimator"],
        )
    )


def stored_results(session: Session, analysis_id: str) -> dict[str, dict[str, Any]]:
    R = db.AnalysisResult
    return {r.estimator: r.entry for r in session.scalars(select(R).where(R.analysis_id == analysis_id))}
