"""`taskgauge serve` with no settings is the whole embedded service: migrated SQLite and blobs under DATA_DIR, a
local API key the CLI finds, and a real Celery worker child over the serverless filesystem transport."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import embedded_server  # noqa: E402  (tests/embedded_server.py, shared with the browser and CLI tests)

pytestmark = pytest.mark.integration


def test_serve_embedded_default_end_to_end(tmp_path):
    server = embedded_server.start(tmp_path)
    try:
        key_file = server.data_dir / "local_api_key"
        assert key_file.is_file() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
        from taskgauge.auth import local_key_path

        assert local_key_path(server.data_dir) == key_file
        children = psutil.Process(server.proc.pid).children(recursive=True)
        workers = [p for p in children if "worker" in " ".join(p.cmdline())]
        assert workers, [p.cmdline() for p in children]
        assert (server.data_dir / "taskgauge.db").is_file() and (server.data_dir / "broker" / "queue").is_dir()

        headers = {"Authorization": f"Bearer {server.key}"}
        X = embedded_server.digits_images(tmp_path / "digits.npz", n=200)
        with open(X, "rb") as fh:
            r = httpx.post(f"{server.url}/api/v1/datasets", headers=headers, files={"file": ("digits.npz", fh)})
        assert r.status_code == 201, r.text
        r = httpx.post(
            f"{server.url}/api/v1/analyses",
            headers=headers,
            json={"dataset_id": r.json()["id"], "estimators": {"twonn": {}}},
        )
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            state = httpx.get(r.headers["location"], headers=headers).json()
            if state["status"] not in ("queued", "running"):
                break
            time.sleep(0.3)
        assert state["status"] == "succeeded", (state, server.log.read_text()[-3000:])
        report = httpx.get(f"{server.url}/api/v1/reports/{state['report_id']}", headers=headers).json()
        assert report["dataset"]["shape"] == [200, 1, 8, 8] and report["results"]["twonn"]["value"] > 0
    finally:
        embedded_server.stop(server)
    # SIGTERM to serve's process group stops the API and its worker child.
    _gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert os.path.getsize(server.log) > 0
