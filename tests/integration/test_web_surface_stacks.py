"""The web-surface behaviour on both stacks (PostgreSQL + Redis with a real worker, and the embedded SQLite one):
`device: "cuda"` with no gpu consumer (found by a Celery inspect on Redis, by torch in the embedded default) is
refused and nothing is queued; a revoked key gets 401; JSON bodies over the limit get 413; problem documents echo a
bounded prefix; the Host check is on by default only in the embedded default."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_cuda_without_a_gpu_worker_is_refused(svc, alice, files):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA here: a worker may consume the gpu queue")
    with open(files["npz"], "rb") as fh:
        ds = alice.post("/datasets", files={"file": ("good.npz", fh)}).json()["id"]
    before = alice.get("/analyses", params={"dataset_id": ds}).json()["count"]
    r = alice.post("/analyses", json={"dataset_id": ds, "estimators": {"mle": {}}, "device": "cuda"})
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json", r.text
    assert r.json()["type"].endswith("/no-gpu-worker")
    assert alice.get("/analyses", params={"dataset_id": ds}).json()["count"] == before  # nothing queued forever


def test_revoked_key_gets_401(svc):
    key = svc.create_key("carol")
    with svc.client(key) as c:
        assert c.get("/datasets").status_code == 200
        listed = subprocess.run(
            [sys.executable, "-m", "app", "keys", "list"],
            env=svc.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        assert key.split("_")[1] in listed and key.split("_", 2)[2] not in listed
        subprocess.run(
            [sys.executable, "-m", "app", "keys", "revoke", key.split("_")[1]],
            env=svc.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        r = c.get("/datasets")
        assert r.status_code == 401 and r.json()["type"].endswith("/unauthorized")


def test_json_body_limit_and_bounded_echo(svc, alice):
    before = alice.get("/model-specs").json()["count"]
    big = {"name": "big", "spec": {"arch": "mlp", "pad": "x" * (1100 * 1024)}}
    r = alice.post("/model-specs", json=big)
    assert r.status_code == 413 and r.json()["type"].endswith("/too-large")
    assert alice.get("/model-specs").json()["count"] == before  # nothing stored
    r = alice.post("/analyses", json={"dataset_id": "Z" * 200_000, "estimators": {"mle": {}}})
    assert r.status_code == 404 and "Z" * 81 not in r.text and len(r.content) < 1000


def test_host_check_is_on_by_default_in_the_embedded_default_only(svc):
    r = httpx.get(svc.api_url + "/healthz", headers={"Host": "evil.example:8000"})
    if svc.env.get("TASKGAUGE_BROKER_URL"):
        assert r.status_code == 200  # production: the proxy in front checks names (TASKGAUGE_ALLOWED_HOSTS to enforce)
    else:
        assert r.status_code == 400 and r.json()["type"].endswith("/untrusted-host")
