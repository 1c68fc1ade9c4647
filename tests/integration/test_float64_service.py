"""Issue 13/15: a float64 upload stays float64 through the service — stored bit for bit, analysed by a real worker,
its report says so, and mle equals skdim's on the same float64 array to 1e-9 relative; on both stacks."""

from __future__ import annotations

import io

import numpy as np
import skdim
from reference_data import data as reference
from reference_data import rel
from service_stack import wait_for

from taskgauge.datasets.canonical import CanonicalDataset


def test_float64_upload_is_analysed_in_float64(svc, alice):
    X = reference("M13a_Scurve")  # float64, 2000 × 3, no duplicates
    buf = io.BytesIO()
    np.savez(buf, X=X)
    r = alice.post("/datasets", files={"file": ("scurve64.npz", buf.getvalue(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    ds = r.json()
    stored = CanonicalDataset.load(svc.blob_store().path(ds["blob_sha256"]))
    assert stored.X.dtype == np.float64 and stored.X.tobytes() == X.tobytes()
    aid = alice.post("/analyses", json={"dataset_id": ds["id"], "estimators": {"mle": {}}}).json()["id"]
    state = wait_for(alice, aid)
    assert state["status"] == "succeeded", state
    report = alice.get(f"/reports/{state['report_id']}").json()
    assert report["dataset"]["dtype"] == "float64"
    assert rel(report["results"]["mle"]["value"], skdim.id.MLE().fit(X).dimension_) <= 1e-9
    assert alice.delete(f"/datasets/{ds['id']}").status_code == 204
