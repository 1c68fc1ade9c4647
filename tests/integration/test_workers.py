"""Watching the cluster: ``GET /api/v1/workers`` (admins only) and ``taskgauge workers`` list the live worker
processes of the stack, with their queues, device and the analysis each runs, as the workers report themselves
(real API and worker processes; on the embedded filesystem broker and on Redis)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from service_stack import upload, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def root_key(svc):
    if svc.kind == "pg-redis-s3":
        pytest.skip("the blob store plays no part here; the pg-redis and embedded stacks cover it")
    return svc.create_key("root")


def _workers(svc, key, **params) -> list[dict]:
    with svc.client(key) as c:
        r = c.get("/workers", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["items"])
    return body["items"]


def _until(fn, timeout=30.0, what=""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last}")


def test_only_admins_list_workers(svc, root_key, alice):
    r = alice.get("/workers")
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    assert "TASKGAUGE_ADMIN_OWNERS" in r.json()["detail"]
    with svc.client("tg_000000000000_nope") as c:
        assert c.get("/workers").status_code == 401
    local = svc.data_dir / "local_api_key"
    if svc.kind == "embedded":  # the embedded default's local key is an admin
        assert _workers(svc, local.read_text().strip()) is not None
    else:
        assert not local.exists()


def test_live_worker_with_its_queues_device_and_current_analysis(svc, root_key, alice, files):
    pid = svc.worker.pid
    (w,) = _until(lambda: [w for w in _workers(svc, root_key) if w["pid"] == pid], what="the worker's row")
    assert w["live"] and w["queues"] == ["default"] and w["device"] == "cpu" and w["concurrency"] == 1
    assert w["hostname"] == socket.gethostname() and w["name"].startswith("taskgauge-")
    assert w["name"].endswith("@" + socket.gethostname())
    assert len(_workers(svc, root_key)) == 1  # only this stack's one worker
    ds = upload(alice, files["npz"]).json()
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"tg_slow": {"seconds": 4}}}).json()["id"]

    def running():
        (w,) = _workers(svc, root_key)
        return [t for t in w["active"] if t["analysis_id"] == aid and t["status"] == "running"]

    (task,) = _until(running, what="the analysis among the worker's active tasks")
    assert task["task"] == "taskgauge.run_analysis" and task["started_at"] <= time.time() and task["args"] == [aid]
    assert wait_for(alice, aid)["status"] == "succeeded"
    _until(lambda: _workers(svc, root_key)[0]["active"] == [], what="the worker idle again")

    # the CLI shows the same
    env = {**svc.env, "TASKGAUGE_API_URL": svc.api_url, "TASKGAUGE_API_KEY": root_key}
    out = subprocess.run(
        [sys.executable, "-m", "app", "workers", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [x["name"] for x in doc["items"]] == [w["name"]] and doc["items"][0]["queues"] == ["default"]
    out = subprocess.run(
        [sys.executable, "-m", "app", "workers"],
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and w["name"] in out.stdout and "idle" in out.stdout, out.stdout + out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "app", "workers"],
        env={**env, "TASKGAUGE_API_KEY": svc.alice_key},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "403" in out.stderr and "TASKGAUGE_ADMIN_OWNERS" in out.stderr, out.stderr


def test_killed_worker_is_gone_after_the_lease_and_a_stopped_one_at_once(svc, root_key):
    lease = float(svc.env["TASKGAUGE_LEASE_S"])
    old = _until(lambda: [w for w in _workers(svc, root_key) if w["pid"] == svc.worker.pid], what="the worker")[0]
    svc.kill_worker()  # SIGKILL: no chance to say goodbye
    t0 = time.monotonic()
    _until(
        lambda: old["name"] not in [w["name"] for w in _workers(svc, root_key)],
        timeout=lease + 10,
        what="the killed worker to drop out of the live list",
    )
    assert time.monotonic() - t0 > lease - 2 * float(svc.env["TASKGAUGE_HEARTBEAT_S"])  # not before its lease ran out
    (gone,) = [w for w in _workers(svc, root_key, all="true") if w["name"] == old["name"]]
    assert gone["live"] is False
    new = svc.start_worker()
    (w,) = _until(lambda: [w for w in _workers(svc, root_key) if w["pid"] == new.pid], what="the new worker")
    assert w["name"] != old["name"] and w["live"]
    # a clean stop (SIGTERM, warm shutdown) removes the row at once, and a new worker takes over
    new.send_signal(15)
    new.wait(timeout=30)
    names = [x["name"] for x in _workers(svc, root_key, all="true")]
    assert w["name"] not in names
    svc.start_worker()
    _until(lambda: [x for x in _workers(svc, root_key) if x["pid"] == svc.worker.pid], what="the restarted worker")
