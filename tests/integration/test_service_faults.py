"""Faults on both deployments: a worker SIGKILLed mid-analysis, the broker restarted while idle."""

from __future__ import annotations

import time

import pytest
from service_stack import upload, wait_for
from sqlalchemy import select

from taskgauge import db

pytestmark = pytest.mark.integration


def _rows(svc, analysis_id):
    engine = db.make_engine(svc.database_url)
    try:
        with db.make_session_factory(engine)() as s:
            results = s.execute(
                select(db.AnalysisResult.estimator, db.AnalysisResult.id, db.AnalysisResult.created_at).where(
                    db.AnalysisResult.analysis_id == analysis_id
                )
            ).all()
            reports = s.scalars(select(db.Report.id).where(db.Report.analysis_id == analysis_id)).all()
            return results, reports
    finally:
        engine.dispose()


def test_sigkill_worker_mid_analysis_then_restarted_worker_finishes_it(svc, alice, files):
    ds = upload(alice, files["npz"]).json()
    requests = {"mle": {"k": 10}, "tg_slow": {"seconds": 4}}
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": requests}).json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # mle is stored and tg_slow is under way
        state = alice.get(f"/analyses/{aid}").json()
        if (state["stage"] or "").startswith("tg_slow: sleeping"):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"tg_slow never started: {state}\n{svc.tail()}")
    results_before, _ = _rows(svc, aid)
    assert [r.estimator for r in results_before] == ["mle"]

    svc.kill_worker()  # SIGKILL to the worker's main process and its pool children
    assert alice.get(f"/analyses/{aid}").json()["status"] == "running"
    svc.start_worker()
    state = wait_for(alice, aid, timeout=120)
    assert state["status"] == "succeeded", (state, svc.tail())
    assert state["attempts"] >= 2

    results, reports = _rows(svc, aid)
    assert sorted(r.estimator for r in results) == ["mle", "tg_slow"]  # no duplicate rows
    mle_after = next(r for r in results if r.estimator == "mle")
    assert (mle_after.id, mle_after.created_at) == (results_before[0].id, results_before[0].created_at)  # not re-run
    assert reports == [state["report_id"]]
    report = alice.get(f"/reports/{state['report_id']}").json()
    assert report["results"]["tg_slow"]["value"] == 12.0 and report["results"]["mle"]["params"]["k"] == 10
    # The extra deliveries (the sweeper's re-queue; with Redis also the restored unacked message) add nothing.
    time.sleep(1.0)
    assert _rows(svc, aid)[1] == reports


def test_broker_restarted_while_idle_next_analysis_runs(svc, alice, files):
    if svc.redis is None:
        pytest.skip("the embedded filesystem transport has no broker server to restart")
    ds = upload(alice, files["npz"]).json()
    svc.redis.restart()
    time.sleep(1.0)
    r = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"twonn": {}}})
    assert r.status_code == 202, r.text
    assert wait_for(alice, r.json()["id"], timeout=90)["status"] == "succeeded", svc.tail()
    assert svc.worker.poll() is None
