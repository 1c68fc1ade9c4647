"""Reports: read, compare, and a dataset's report history with flags.

For each report of a dataset, compared with the one before it (by creation time):

* ``version_change``: estimators whose recorded version differs from the previous report's — a re-analysis
  after an upgrade, comparable to but distinguishable from the old report (docs/dashboard.md);
* ``drift``: estimators whose headline value moved beyond a confidence interval: the new value lies outside
  the previous report's CI, or the previous value outside the new CI. Estimators that report no CI on either
  side are never flagged (there is no stated uncertainty to judge the change against).

>>> a = {"mle": {"value": 5.0, "ci": [4.8, 5.2], "version": "1.0"}}
>>> b = {"mle": {"value": 6.0, "ci": [5.9, 6.1], "version": "1.1"}}
>>> compare_results(a, b)
{'version_change': ['mle'], 'drift': ['mle']}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from taskgauge import db
from taskgauge.errors import InvalidInput
from taskgauge.services import get_owned


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)  # "inf"/"nan" strings of the report schema parse too
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _ci(entry: Mapping[str, Any]) -> tuple[float, float] | None:
    ci = entry.get("ci")
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    lo, hi = _num(ci[0]), _num(ci[1])
    if lo is None or hi is None:
        return None
    return (min(lo, hi), max(lo, hi))


def compare_results(prev: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[str]]:
    """Flags of ``new`` (a report's ``results``) relative to ``prev``."""
    version_change, drift = [], []
    for name, entry in new.items():
        old = prev.get(name)
        if not isinstance(old, Mapping) or not isinstance(entry, Mapping):
            continue
        if str(old.get("version")) != str(entry.get("version")):
            version_change.append(name)
        v_old, v_new = _num(old.get("value")), _num(entry.get("value"))
        if v_old is None or v_new is None:
            continue
        ci_old, ci_new = _ci(old), _ci(entry)
        outside_old = ci_old is not None and not (ci_old[0] <= v_new <= ci_old[1])
        outside_new = ci_new is not None and not (ci_new[0] <= v_old <= ci_new[1])
        if outside_old or outside_new:
            drift.append(name)
    return {"version_change": sorted(version_change), "drift": sorted(drift)}


def headline(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: {"value": r.get("value"), "ci": r.get("ci"), "version": r.get("version")}
        for name, r in results.items()
        if isinstance(r, Mapping)
    }


def build_history(reports: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``reports``: dicts with report_id, analysis_id, created_at, results, optional schedule_id/due_at.

    Returns the history newest first, each item with ``values`` (headline value, CI, version per estimator) and
    ``flags`` relative to the previous report in time.
    """
    ordered = sorted(reports, key=lambda r: str(r["created_at"]))
    out: list[dict[str, Any]] = []
    prev: Mapping[str, Any] | None = None
    for r in ordered:
        results = r.get("results") or {}
        flags = compare_results(prev, results) if prev is not None else {"version_change": [], "drift": []}
        out.append(
            {
                "report_id": r["report_id"],
                "analysis_id": r.get("analysis_id"),
                "created_at": r["created_at"],
                "schedule_id": r.get("schedule_id"),
                "due_at": r.get("due_at"),
                "trigger": "schedule" if r.get("schedule_id") else "manual",
                "values": headline(results),
                "flags": flags,
            }
        )
        prev = results
    out.reverse()
    return out


def get_report(session: Session, owner_id: str, report_id: str) -> db.Report:
    return get_owned(session, db.Report, owner_id, report_id)


def get_reports(session: Session, owner_id: str, report_ids: list[str], *, limit: int = 50) -> list[db.Report]:
    """Several of the owner's reports, in the order asked (for ``/compare``)."""
    if not report_ids or len(report_ids) > limit:
        raise InvalidInput(
            f"give between 1 and {limit} comma-separated report ids, e.g. ?report_ids=ID1,ID2", title="Bad report_ids"
        )
    return [get_report(session, owner_id, i) for i in report_ids]


def dataset_history(session: Session, owner_id: str, dataset_id: str) -> list[dict[str, Any]]:
    """The dataset's reports, newest first, each with headline values and version-change / drift flags."""
    get_owned(session, db.Dataset, owner_id, dataset_id)
    rows = session.execute(
        select(db.Report.id, db.Report.analysis_id, db.Report.created_at, db.Report.document, db.Analysis.schedule_id)
        .join(db.Analysis, db.Analysis.id == db.Report.analysis_id)
        .where(db.Report.dataset_id == dataset_id, db.Report.owner_id == owner_id)
    ).all()
    return build_history(
        {
            "report_id": rid,
            "analysis_id": aid,
            "created_at": (doc or {}).get("created_at") or created.isoformat(),
            "results": (doc or {}).get("results") or {},
            "schedule_id": sid,
        }
        for rid, aid, created, doc, sid in rows
    )
