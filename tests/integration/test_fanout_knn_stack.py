"""A split kNN (TASKGAUGE_KNN_SHARD_ROWS, workers/fanout_knn.py) on two real worker processes, on PostgreSQL + Redis
with the blobs on the filesystem and on S3: the plan and parts run as shards, the estimators read the merged table,
the values equal the one-process pipeline's bit for bit, and no shard blob is left in the store afterwards.
(tests/workers/test_fanout_knn.py drives the same shard by shard: re-delivery, cancel, a worker dying mid-part.)"""

from __future__ import annotations

import pytest
import service_stack
from service_stack import upload, wait_for
from sqlalchemy import select

from taskgauge import db

pytestmark = pytest.mark.integration

REQUESTS = {"mle": {"k": 10}, "twonn": {}, "gride": {"range_max": 16}, "label_sharpness": {}}


@pytest.fixture(scope="module", params=["pg-redis", "pg-redis-s3"])
def split(request, tmp_path_factory):
    if request.param == "pg-redis-s3":
        import s3_server

        s3_server.endpoint()  # skips when no local S3 server can be had
    env = {"TASKGAUGE_FANOUT": "true", "TASKGAUGE_KNN_SHARD_ROWS": "100"}  # 300 rows: 3 parts
    with service_stack.running(request.param, tmp_path_factory.mktemp("fanout-knn"), extra_env=env) as stack:
        yield stack


def _shards(stack, analysis_id):
    engine = db.make_engine(stack.database_url)
    try:
        with db.make_session_factory(engine)() as s:
            S = db.AnalysisShard
            return {r.key: r for r in s.scalars(select(S).where(S.analysis_id == analysis_id))}
    finally:
        engine.dispose()


def test_split_knn_on_two_workers_gives_the_unsharded_values_and_leaves_no_blob(split, files):
    from taskgauge.pipeline import analyse_file

    with split.client(split.alice_key) as alice:
        ds = upload(alice, files["npz"]).json()
        before = split.blob_store().keys()
        assert len(before) == 1
        aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": REQUESTS}).json()["id"]
        state = wait_for(alice, aid, timeout=120)
        assert state["status"] == "succeeded", (state, split.tail())
        report = alice.get(f"/reports/{state['report_id']}").json()

    local = analyse_file(files["npz"], requests=REQUESTS, device="cpu")
    for name in ("mle", "twonn", "gride"):
        got, want = report["results"][name], local["results"][name]
        assert got["value"] == want["value"] and got["details"] == want["details"], name  # bit for bit
    assert report["results"]["label_sharpness"]["value"] == local["results"]["label_sharpness"]["value"]
    keys = sorted(s["key"] for s in report["environment"]["shards"])
    assert keys == sorted(["knn:plan", "knn:0/3", "knn:1/3", "knn:2/3", *(f"est:{n}" for n in REQUESTS)])
    workers = {s["worker"] for s in report["environment"]["shards"]}
    assert all(w and ":" in w for w in workers)
    shards = _shards(split, aid)
    assert all(r.status == "succeeded" and r.attempts == 1 and r.blob_sha256 is None for r in shards.values())
    assert split.blob_store().keys() == before  # the plan's and the parts' blobs are gone
    # each stage was sent by the shard that finished the one before: none waited for the sweeper's re-send
    logs = "".join(p.read_text(errors="replace") for p in split.logs if p.name.startswith("worker"))
    assert "re-sending shard" not in logs
