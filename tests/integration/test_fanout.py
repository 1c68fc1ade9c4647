"""Fan-out (TASKGAUGE_FANOUT): one analysis's estimators run as shards on two real worker processes, on PostgreSQL +
Redis. Values equal the one-process pipeline's; a worker SIGKILLed mid-shard costs a re-run of that shard only;
cancelling stops every shard."""

from __future__ import annotations

import signal
import time

import pytest
import service_stack
from service_stack import kill_group, upload, wait_for
from sqlalchemy import select

from taskgauge import db

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fan(tmp_path_factory):
    with service_stack.running(
        "pg-redis", tmp_path_factory.mktemp("fanout"), extra_env={"TASKGAUGE_FANOUT": "true"}
    ) as stack:
        yield stack


@pytest.fixture
def alice(fan):
    with fan.client(fan.alice_key) as c:
        yield c


def _shards(stack, analysis_id):
    engine = db.make_engine(stack.database_url)
    try:
        with db.make_session_factory(engine)() as s:
            S = db.AnalysisShard
            return {r.key: r for r in s.scalars(select(S).where(S.analysis_id == analysis_id))}
    finally:
        engine.dispose()


def _rows(stack, model, analysis_id):
    engine = db.make_engine(stack.database_url)
    try:
        with db.make_session_factory(engine)() as s:
            return list(s.scalars(select(model).where(model.analysis_id == analysis_id)))
    finally:
        engine.dispose()


def test_each_estimator_is_a_shard_and_values_equal_the_single_task(fan, alice, files):
    from taskgauge.pipeline import analyse_file

    ds = upload(alice, files["npz"]).json()
    requests = {"mle": {"k": 10}, "twonn": {}, "gride": {}, "label_sharpness": {}}
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": requests}).json()["id"]
    state = wait_for(alice, aid, timeout=120)
    assert state["status"] == "succeeded", (state, fan.tail())
    report = alice.get(f"/reports/{state['report_id']}").json()

    local = analyse_file(files["npz"], requests=requests, device="cpu")
    assert set(report["results"]) == set(requests)
    for name, entry in local["results"].items():
        got = report["results"][name]
        assert got["params"] == entry["params"] and got["version"] == entry["version"]
        assert got["value"] == pytest.approx(entry["value"], rel=1e-12), name
    shards = report["environment"]["shards"]
    assert sorted(s["key"] for s in shards) == sorted(f"est:{n}" for n in requests)
    assert all(s["worker"] and s["seconds"] is not None and s["device"] == "cpu" for s in shards)
    assert len(_rows(fan, db.AnalysisResult, aid)) == 4 and len(_rows(fan, db.Report, aid)) == 1


def test_sigkill_of_the_workers_mid_shard_reruns_only_that_shard(fan, alice, files):
    ds = upload(alice, files["npz"]).json()
    requests = {"mle": {"k": 10}, "tg_slow": {"seconds": 4}}
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": requests}).json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the mle shard is done and tg_slow is under way
        shards = _shards(fan, aid)
        if (
            shards.get("est:mle") is not None
            and shards["est:mle"].status == "succeeded"
            and shards.get("est:tg_slow") is not None
            and shards["est:tg_slow"].status == "running"
        ):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"shards never reached the expected state: {shards}\n{fan.tail()}")
    mle_row = next(r for r in _rows(fan, db.AnalysisResult, aid) if r.estimator == "mle")
    for w in fan.workers:
        kill_group(w, signal.SIGKILL)
    fan.workers[:] = [fan.start_worker(), fan.start_worker()]

    state = wait_for(alice, aid, timeout=120)
    assert state["status"] == "succeeded", (state, fan.tail())
    shards = _shards(fan, aid)
    assert shards["est:tg_slow"].attempts >= 2 and shards["est:mle"].attempts == 1
    results = _rows(fan, db.AnalysisResult, aid)
    assert sorted(r.estimator for r in results) == ["mle", "tg_slow"]  # no duplicate rows
    assert next(r.id for r in results if r.estimator == "mle") == mle_row.id  # not re-run
    assert [r.id for r in _rows(fan, db.Report, aid)] == [state["report_id"]]
    report = alice.get(f"/reports/{state['report_id']}").json()
    assert report["results"]["tg_slow"]["value"] == 12.0


def test_cancel_stops_every_shard(fan, alice, files):
    ds = upload(alice, files["npz"]).json()
    requests = {"tg_slow": {"seconds": 30}, "mle": {}, "twonn": {}}
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": requests}).json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shards = _shards(fan, aid)
        if shards.get("est:tg_slow") is not None and shards["est:tg_slow"].status == "running":
            break
        time.sleep(0.1)
    assert alice.post(f"/analyses/{aid}/cancel").status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        shards = _shards(fan, aid)
        if all(s.status != "running" for s in shards.values()):
            break
        time.sleep(0.2)
    assert all(s.status in ("succeeded", "cancelled", "queued") for s in shards.values()), shards
    assert shards["est:tg_slow"].status == "cancelled"
    time.sleep(2 * 1.0 + 1)  # a heartbeat or two later: nothing started again, no report
    assert all(s.status != "running" for s in _shards(fan, aid).values())
    assert alice.get(f"/analyses/{aid}").json()["status"] == "cancelled"
    assert _rows(fan, db.Report, aid) == []


def test_redis_restarted_mid_fanout_the_analysis_completes(fan, alice, files):
    """Redis (no persistence) restarted while shards wait in the queue: their messages are lost, and the sweeper
    re-sends them after 2 × LEASE_S; the running shard goes on. One report, one result row per estimator."""
    ds = upload(alice, files["npz"]).json()
    requests = {"tg_slow": {"seconds": 3}, "mle": {}, "twonn": {}, "gride": {}}
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": requests}).json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shards = _shards(fan, aid)
        if len(shards) == 4 and any(s.status == "running" for s in shards.values()):
            break
        time.sleep(0.05)
    fan.redis.restart()
    state = wait_for(alice, aid, timeout=150)
    assert state["status"] == "succeeded", (state, fan.tail())
    assert sorted(r.estimator for r in _rows(fan, db.AnalysisResult, aid)) == sorted(requests)
    assert [r.id for r in _rows(fan, db.Report, aid)] == [state["report_id"]]
