"""The read path under load (issue 15, "Load on the embedded default"; bench/load_embedded.py measures it).

A read costs one worker-thread call (the key lookup, the query and the response model in one session), and the SSE
streams cost one database read per poll interval between them, whatever their number. Both are counted here with
the thread pool's own entry point (FastAPI and Starlette go through ``anyio.to_thread.run_sync``).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import anyio.to_thread
import numpy as np
import pytest
from sqlalchemy import update

from app.live import AnalysisWatch
from taskgauge import db
from taskgauge.auth import authenticate, create_key

PROBLEM = "application/problem+json"


@pytest.fixture
def thread_calls(monkeypatch):
    """The names of the functions run in the thread pool, in order (cleared by the test before the request)."""
    calls: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func, *args, **kwargs):
        inner = getattr(func, "func", func)  # run_in_threadpool passes a functools.partial
        calls.append(getattr(inner, "__qualname__", type(inner).__name__))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return calls


@pytest.fixture
def stocked(live, tmp_path):
    """The live app with one dataset, one queued analysis and one report of the tester's."""
    X = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(np.int64))
    with open(tmp_path / "d.npz", "rb") as fh:
        r = live.client.post("/api/v1/datasets", headers=live.auth, files={"file": ("d.npz", fh)})
    assert r.status_code == 201, r.text
    ds = r.json()
    r = live.client.post(
        "/api/v1/analyses", headers=live.auth, json={"dataset_id": ds["id"], "estimators": {"mle": {}}}
    )
    assert r.status_code == 202, r.text
    an = r.json()
    document = {"report_id": str(uuid.uuid4()), "results": {"mle": {"value": 3.25, "ci": [3.0, 3.5]}}, "note": "é"}
    with live.sessions()() as s, s.begin():
        owner_id = authenticate(s, live.key).owner_id
        s.add(
            db.Report(
                id=document["report_id"],
                owner_id=owner_id,
                analysis_id=an["id"],
                dataset_id=ds["id"],
                document=document,
            )
        )
    return live, ds, an, document


def test_every_read_is_one_worker_thread_call(stocked, thread_calls):
    live, ds, an, document = stocked
    expected = {
        "/api/v1/datasets": lambda b: b["count"] == 1 and b["items"][0]["id"] == ds["id"],
        f"/api/v1/datasets/{ds['id']}": lambda b: b["id"] == ds["id"] and b["n_samples"] == 60,
        "/api/v1/analyses": lambda b: b["count"] == 1 and b["items"][0]["id"] == an["id"],
        f"/api/v1/analyses/{an['id']}": lambda b: b["id"] == an["id"] and b["status"] == "queued",
        f"/api/v1/reports/{document['report_id']}": lambda b: b == document,
        f"/api/v1/datasets/{ds['id']}/reports": lambda b: b["count"] == 1,
        "/api/v1/model-specs": lambda b: b["count"] == 0,
        "/api/v1/schedules": lambda b: b["count"] == 0,
    }
    for url, check in expected.items():
        thread_calls.clear()
        r = live.client.get(url, headers=live.auth)
        assert r.status_code == 200, (url, r.text)
        assert check(r.json()), (url, r.json())
        assert thread_calls == ["Reader._run"], (url, thread_calls)  # a `def` route with a session took six


def test_read_auth_failures_and_other_owners(stocked, thread_calls):
    live, ds, an, _ = stocked
    thread_calls.clear()
    r = live.client.get("/api/v1/datasets")  # no key: refused on the event loop
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM and "keys create" in r.json()["detail"]
    assert thread_calls == []
    r = live.client.get("/api/v1/datasets", headers={"Authorization": "Bearer tg_000000000000_nope"})
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
    assert thread_calls == ["Reader._run"]
    with live.sessions()() as s, s.begin():
        _row, other = create_key(s, "mallory")
    mallory = {"Authorization": f"Bearer {other}"}
    assert live.client.get("/api/v1/datasets", headers=mallory).json()["count"] == 0
    for url in (f"/api/v1/datasets/{ds['id']}", f"/api/v1/analyses/{an['id']}", f"/api/v1/analyses/{an['id']}/events"):
        r = live.client.get(url, headers=mallory)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, (url, r.text)


def test_sse_stream_follows_the_analysis_to_its_end(stocked):
    live, _ds, an, _ = stocked
    A = db.Analysis

    def finish() -> None:
        time.sleep(0.8)
        with live.sessions()() as s, s.begin():
            s.execute(update(A).where(A.id == an["id"]).values(status=db.RUNNING, progress=0.5))
        time.sleep(0.8)
        with live.sessions()() as s, s.begin():
            s.execute(update(A).where(A.id == an["id"]).values(status=db.SUCCEEDED, progress=1.0))

    threading.Thread(target=finish, daemon=True).start()
    t0 = time.monotonic()
    r = live.client.get(f"/api/v1/analyses/{an['id']}/events", headers=live.auth)  # returns when the stream ends
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
    states = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[0] == "progress" and events[-1] == "end", r.text
    assert '"status": "queued"' in states[0] and '"status": "succeeded"' in states[-1], r.text
    assert any('"progress": 0.5' in d for d in states), r.text  # the running state was seen on the way
    assert time.monotonic() - t0 < 10


def test_one_database_read_per_interval_for_all_streams():
    """20 streams on one analysis and one on another: each poll is one load of both ids; a change wakes the
    streams of that analysis only; a deleted analysis ends its streams; with no stream left the polling stops."""
    rows = {"a": {"status": "running", "progress": 0.1}, "b": {"status": "queued", "progress": 0.0}}
    owners_of = {"a": "alice", "b": "alice"}
    loads: list[dict[str, str]] = []

    def load_many(owners: dict[str, str]) -> dict[str, dict]:
        loads.append(dict(owners))
        return {i: dict(rows[i]) for i in owners if i in rows and owners_of[i] == owners[i]}

    async def scenario() -> None:
        watch = AnalysisWatch(load_many, 0.02)
        on_a = [watch.follow("alice", "a", dict(rows["a"])) for _ in range(20)]
        on_b = watch.follow("alice", "b", dict(rows["b"]))
        a_changed, b_changed = on_a[0].changed, on_b.changed
        await asyncio.sleep(0.2)
        assert len(loads) >= 3 and all(load == {"a": "alice", "b": "alice"} for load in loads)
        assert not a_changed.is_set() and not b_changed.is_set()  # nothing changed: nobody is woken

        rows["a"] = {"status": "succeeded", "progress": 1.0}
        await asyncio.wait_for(a_changed.wait(), 2)
        assert all(f is on_a[0] for f in on_a) and on_a[0].snapshot == rows["a"]
        assert not b_changed.is_set()

        del rows["b"]  # deleted with its dataset
        await asyncio.wait_for(b_changed.wait(), 2)
        assert on_b.gone

        spy = watch.follow("mallory", "x", {"status": "queued"})  # an id the poller's owner check does not return
        await asyncio.wait_for(spy.changed.wait(), 2)
        assert spy.gone

        for _ in on_a:
            watch.unfollow("a")
        watch.unfollow("b")
        watch.unfollow("x")
        await asyncio.sleep(0.1)
        polled = len(loads)
        await asyncio.sleep(0.1)
        assert len(loads) == polled  # the poller stopped
        again = watch.follow("alice", "a", dict(rows["a"]))  # and starts again for a new stream
        await asyncio.sleep(0.1)
        assert len(loads) > polled and loads[-1] == {"a": "alice"} and not again.gone
        watch.unfollow("a")
        await watch.close()

    asyncio.run(scenario())


def test_get_analyses_filters_by_owner(live):
    """The poller's query (taskgauge.services.analyses.get_analyses) returns a row only to its owner."""
    from taskgauge.services.analyses import get_analyses, new_analysis

    with live.sessions()() as s, s.begin():
        alice = authenticate(s, live.key).owner_id
        _row, other = create_key(s, "mallory")
        mallory = authenticate(s, other).owner_id
        ds = db.Dataset(
            owner_id=alice,
            name="d",
            filename="d.npz",
            sha256="0" * 64,
            size_bytes=1,
            blob_sha256="1" * 64,
            n_samples=1,
            shape=[1, 1],
        )
        s.add(db.Blob(sha256="1" * 64, size=1))
        s.flush()
        s.add(ds)
        s.flush()
        row = new_analysis(owner_id=alice, dataset_id=ds.id, model_spec_id=None, requests={"mle": {}}, device="cpu")
        s.add(row)
    with live.sessions()() as s:
        assert [r.id for r in get_analyses(s, {row.id: alice})] == [row.id]
        assert get_analyses(s, {row.id: mallory}) == []
        assert get_analyses(s, {str(uuid.uuid4()): alice}) == []
