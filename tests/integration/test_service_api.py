"""The service end to end on both deployments (PostgreSQL + Redis, and the embedded SQLite + filesystem
transport): real API process, real Celery worker process, no eager mode, no mocks."""

from __future__ import annotations

import io
import json
import math
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from service_stack import upload, wait_for
from sqlalchemy import func, select

from taskgauge import db

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def _engine(svc):
    return db.make_engine(svc.database_url)


def _count(svc, model, *where) -> int:
    engine = _engine(svc)
    try:
        with db.make_session_factory(engine)() as s:
            return s.scalar(select(func.count()).select_from(model).where(*where))
    finally:
        engine.dispose()


def _close(a, b, tol=1e-9):
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def _read_sse(svc, key, analysis_id, timeout=90.0) -> list[tuple[str, dict]]:
    events, name = [], None
    with httpx.stream(
        "GET",
        f"{svc.api_url}/api/v1/analyses/{analysis_id}/events",
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
    ) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if name == "end":
                    break
    return events


def test_health_docs_and_auth(svc):
    assert httpx.get(svc.api_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(svc.api_url + "/readyz").json()
    assert ready["database"] == "ok" and ready["broker"].startswith("ok")
    assert ready["blobs"] == f"ok ({svc.blob_store().url})"
    assert httpx.get(svc.api_url + "/docs").status_code == 200
    spec = httpx.get(svc.api_url + "/openapi.json").json()
    assert "/api/v1/analyses/{analysis_id}/events" in spec["paths"]
    assert PROBLEM in spec["paths"]["/api/v1/datasets"]["post"]["responses"]["413"]["content"]
    r = httpx.get(svc.api_url + "/api/v1/datasets")
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    assert "keys create" in r.json()["detail"]
    r = httpx.get(svc.api_url + "/api/v1/datasets", headers={"Authorization": "Bearer tg_000000000000_nope"})
    assert r.status_code == 401


def test_upload_analyse_report_equals_local_mode(svc, alice, files):
    from taskgauge.pipeline import analyse_file

    r = upload(alice, files["npz"], name="subspace4")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["n_samples"] == 300 and ds["shape"] == [300, 12] and ds["n_classes"] == 2
    requests = {"mle": {"k": 10}, "twonn": {}}
    r = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": requests})
    assert r.status_code == 202, r.text
    analysis = r.json()
    assert r.headers["location"].endswith(f"/api/v1/analyses/{analysis['id']}")
    assert analysis["status"] == "queued"

    events = _read_sse(svc, svc.alice_key, analysis["id"])
    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded", events[-1]
    progress = [e["progress"] for _, e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0

    state = alice.get(f"/analyses/{analysis['id']}").json()
    report = alice.get(f"/reports/{state['report_id']}").json()
    local = analyse_file(files["npz"], requests=requests, device="cpu")
    assert set(report["results"]) == set(local["results"]) == {"mle", "twonn"}
    for name, entry in local["results"].items():
        got = report["results"][name]
        assert got["version"] == entry["version"] and got["params"] == entry["params"]
        assert _close(got["value"], entry["value"]), (name, got["value"], entry["value"])
        for a, b in zip(got.get("ci") or [], entry.get("ci") or []):
            assert _close(a, b)
    assert report["dataset"]["sha256"] == local["dataset"]["sha256"] == ds["sha256"]
    assert report["dataset"]["n_samples"] == 300 and report["analysis_id"] == analysis["id"]
    # One result row per estimator, one report.
    assert _count(svc, db.AnalysisResult, db.AnalysisResult.analysis_id == analysis["id"]) == 2
    assert _count(svc, db.Report, db.Report.analysis_id == analysis["id"]) == 1

    history = alice.get(f"/datasets/{ds['id']}/reports").json()
    assert [h["report_id"] for h in history["items"]] == [report["report_id"]]
    cmp = alice.get("/compare", params={"report_ids": report["report_id"]}).json()
    assert {row["estimator"] for row in cmp["rows"]} == {"mle", "twonn"}


def test_csv_with_label_column(svc, alice, files):
    r = upload(alice, files["csv"], label_column="species")
    assert r.status_code == 201, r.text
    assert r.json()["classes"] == ["setosa", "virginica"] and r.json()["shape"] == [300, 4]
    aid = alice.post("/analyses", json={"dataset_id": r.json()["id"], "estimators": {"twonn": None}}).json()["id"]
    assert wait_for(alice, aid)["status"] == "succeeded"


# ------------------------------------------------------------------------------------------- bad input


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_bytes(entries: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _bad_uploads(good_npz: bytes) -> list:
    X = np.random.default_rng(0).normal(size=(50, 3))
    X_nan = X.copy()
    X_nan[7, 1] = np.nan
    return [
        pytest.param(
            "big.npz", np.random.default_rng(1).bytes(int(1.3 * 1024 * 1024)), {}, 413, "limit", id="oversize"
        ),
        pytest.param("cut.npz", good_npz[: len(good_npz) // 2], {}, 422, "", id="truncated-npz"),
        pytest.param("obj.npz", _npz_bytes(X=np.array([{"a": 1}] * 5, dtype=object)), {}, 422, "", id="pickled-object"),
        pytest.param("nan.npz", _npz_bytes(X=X_nan), {}, 422, "nan", id="nan"),
        pytest.param("ragged.csv", b"a,b,label\n1,2,x\n3\n4,5,y,6\n", {}, 422, "", id="ragged-csv"),
        pytest.param(
            "t.csv",
            b"a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n",
            {"label_column": "species"},
            422,
            "species",
            id="missing-label-column",
        ),
        pytest.param(
            "trav.zip",
            _zip_bytes({"cls/a.png": _png(1), "../evil/b.png": _png(2)}),
            {},
            422,
            "",
            id="zip-path-traversal",
        ),
        pytest.param(
            "bomb.zip",
            _zip_bytes({"cls/a.png": bytes(80 * 1024 * 1024)}, zipfile.ZIP_DEFLATED),
            {},
            413,
            "",
            id="zip-bomb",
        ),
        pytest.param(
            "bad.zip",
            _zip_bytes({"c1/a.png": b"this is not a png", "c2/b.png": _png(3)}),
            {},
            422,
            "",
            id="undecodable-image",
        ),
    ]


BAD_CASES = _bad_uploads(_npz_bytes(X=np.random.default_rng(2).normal(size=(200, 10)).astype(np.float32)))


@pytest.mark.parametrize("filename, payload, fields, status, word", BAD_CASES)
def test_bad_upload_is_rejected_and_leaves_nothing(svc, bob, filename, payload, fields, status, word):
    before_blobs = svc.blob_storage_contents()
    before_rows = _count(svc, db.Dataset)
    r = bob.post("/datasets", files={"file": (filename, payload, "application/octet-stream")}, data=fields)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and len(body["detail"]) > 20
    assert word.lower() in body["detail"].lower()
    assert _count(svc, db.Dataset) == before_rows
    assert svc.blob_storage_contents() == before_blobs  # on S3: the bucket exactly as before
    assert list((svc.data_dir / "tmp" / "uploads").glob("*")) == []
    assert list((svc.data_dir / "blobs" / ".tmp").glob("*")) == [] and svc.blob_store().temp_files() == []


def test_bad_analysis_requests_and_other_owners_ids(svc, alice, bob, files):
    ds = upload(alice, files["npz"]).json()
    before = _count(svc, db.Analysis)
    r = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"no_such_estimator": {}}})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "unknown estimator" in r.json()["detail"] and "mle" in r.json()["detail"]
    r = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"mle": {"k": "many", "bogus": 1}}})
    assert r.status_code == 422 and "bad params" in r.json()["detail"] and "Allowed params" in r.json()["detail"]
    r = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": "mle"})
    assert r.status_code == 422 and r.json()["errors"]
    # Another owner's ids answer 404, exactly as ids that do not exist.
    for resp in (
        bob.get(f"/datasets/{ds['id']}"),
        bob.delete(f"/datasets/{ds['id']}"),
        bob.post("/analyses", json={"dataset_id": ds["id"]}),
        bob.get("/datasets/does-not-exist"),
    ):
        assert resp.status_code == 404 and resp.headers["content-type"] == PROBLEM, resp.text
    assert _count(svc, db.Analysis) == before
    assert alice.get(f"/datasets/{ds['id']}").status_code == 200
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"twonn": {}}}).json()["id"]
    assert bob.get(f"/analyses/{aid}").status_code == 404
    rid = wait_for(alice, aid)["report_id"]
    assert bob.get(f"/reports/{rid}").status_code == 404
    assert bob.get(f"/datasets/{ds['id']}/reports").status_code == 404


# ----------------------------------------------------------------------------------- storage and worker


def test_same_file_is_stored_once_and_blob_removed_with_last_dataset(svc, alice, files, tmp_path):
    blobs = svc.blob_store()
    # A file no other test uploads, so this test owns its blob.
    rng = np.random.default_rng(99)
    path = tmp_path / "dedupe.npz"
    np.savez(path, X=rng.normal(size=(60, 5)).astype(np.float32))
    with ThreadPoolExecutor(7) as pool:  # concurrent uploads of the same, not yet stored, file
        first, *rest = [r.json() for r in pool.map(lambda _: upload(alice, path), range(7))]
    ids = [first["id"]] + [r["id"] for r in rest]
    assert len(set(ids)) == 7
    sha = first["blob_sha256"]
    assert {r["blob_sha256"] for r in rest} == {sha}
    assert blobs.keys().count(sha) == 1
    prefix = "blobs/" if svc.s3_bucket else ""
    assert [k for k in svc.blob_storage_contents() if sha in k] == [f"{prefix}{sha[:2]}/{sha}"]
    assert _count(svc, db.Blob, db.Blob.sha256 == sha) == 1
    for i in ids[:-1]:
        assert alice.delete(f"/datasets/{i}").status_code == 204
    assert blobs.exists(sha)  # still used by the last dataset
    assert alice.delete(f"/datasets/{ids[-1]}").status_code == 204
    assert not blobs.exists(sha) and _count(svc, db.Blob, db.Blob.sha256 == sha) == 0
    assert alice.get(f"/datasets/{ids[-1]}").status_code == 404


def test_failing_estimator_fails_the_analysis_and_the_worker_lives(svc, alice, files):
    ds = upload(alice, files["npz"]).json()
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"twonn": {}, "tg_fail": {}}}).json()[
        "id"
    ]
    state = wait_for(alice, aid)
    assert state["status"] == "failed"
    err = state["error"]
    assert err["status"] == 500 and err["title"] == "Analysis failed"
    assert "deliberate test failure" in err["detail"] and "re-run" in err["detail"]
    assert state["report_id"] is None
    # twonn finished before tg_fail and its row is kept; no report.
    assert _count(svc, db.AnalysisResult, db.AnalysisResult.analysis_id == aid) == 1
    assert _count(svc, db.Report, db.Report.analysis_id == aid) == 0
    assert svc.worker.poll() is None
    aid2 = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"mle": {}}}).json()["id"]
    assert wait_for(alice, aid2)["status"] == "succeeded"


def test_cancel_running_analysis(svc, alice, files):
    ds = upload(alice, files["npz"]).json()
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"tg_slow": {"seconds": 30}}}).json()[
        "id"
    ]
    wait_for(alice, aid, until=("running",))
    r = alice.post(f"/analyses/{aid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = alice.post(f"/analyses/{aid}/cancel")
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    # The worker notices within a heartbeat and is free for the next analysis well before 30 s.
    aid2 = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"twonn": {}}}).json()["id"]
    assert wait_for(alice, aid2, timeout=20)["status"] == "succeeded"
    final = alice.get(f"/analyses/{aid}").json()
    assert final["status"] == "cancelled" and final["report_id"] is None


def test_migrations_match_models(svc):
    from taskgauge.migrate import check

    check(svc.database_url)  # raises AutogenerateDiffsDetected on drift
