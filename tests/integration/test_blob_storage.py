"""The blob store the settings name is the one the service uses, on every stack: with ``pg-redis-s3`` the
canonical file goes to the bucket (and nowhere under ``DATA_DIR``), the worker reads it from there, and deleting
the dataset deletes the object."""

from __future__ import annotations

import numpy as np
import pytest
from service_stack import upload, wait_for

pytestmark = pytest.mark.integration


def test_round_trip_through_the_configured_blob_store(svc, alice, tmp_path):
    path = tmp_path / "own.npz"  # content no other test uploads, so this test owns its blob
    rng = np.random.default_rng(1234)
    np.savez(path, X=rng.normal(size=(120, 6)).astype(np.float32), y=rng.integers(0, 3, 120))
    before = svc.blob_storage_contents()
    ds = upload(alice, path).json()
    sha = ds["blob_sha256"]
    added = sorted(set(svc.blob_storage_contents()) - set(before))
    local = [p.name for p in (svc.data_dir / "blobs").rglob("*") if p.is_file()]
    if svc.s3_bucket:
        assert added == [f"blobs/{sha[:2]}/{sha}"]  # the object, under the configured prefix
        assert local == []  # nothing on this host's disk
    else:
        assert added == [f"{sha[:2]}/{sha}"] and sha in local  # other tests' blobs may share the stack's disk
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"twonn": {}}}).json()["id"]
    state = wait_for(alice, aid)
    assert state["status"] == "succeeded", (state, svc.tail())
    report = alice.get(f"/reports/{state['report_id']}").json()
    assert np.isfinite(report["results"]["twonn"]["value"])
    assert alice.delete(f"/datasets/{ds['id']}").status_code == 204
    assert svc.blob_storage_contents() == before
