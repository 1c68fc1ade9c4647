"""`taskgauge serve` supervises its embedded worker (issue 15): when the worker's main process is SIGKILLed,

* ``/readyz`` answers 503 (problem+json, Retry-After) within 10 s, until a new worker is ready;
* what was left of the old worker's process group (pool children, the embedded beat) is gone — no orphaned beat;
* a new worker is started and becomes ready;
* the analysis that was running is re-queued by the sweeper in the API process and succeeds, and one posted while
  the worker was down runs too: no analysis is stuck.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import embedded_server  # noqa: E402

pytestmark = pytest.mark.integration


def _worker_main(serve_pid: int) -> psutil.Process:
    kids = [p for p in psutil.Process(serve_pid).children() if "worker" in " ".join(p.cmdline())]
    assert len(kids) == 1, [p.cmdline() for p in kids]
    return kids[0]


def _group(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def _wait(pred, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def _ready(url: str) -> int:
    try:
        return httpx.get(url + "/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def _state(url, headers, aid):
    return httpx.get(f"{url}/api/v1/analyses/{aid}", headers=headers, timeout=30).json()


def test_killed_embedded_worker_is_restarted_and_readyz_says_so(tmp_path, tmp_path_factory):
    import numpy as np

    env = {
        "TASKGAUGE_LEASE_S": "3",
        "TASKGAUGE_HEARTBEAT_S": "0.5",
        "PYTHONPATH": os.pathsep.join([str(HERE / "plugins"), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    server = embedded_server.start(tmp_path, extra_env=env)
    try:
        url, headers = server.url, {"Authorization": f"Bearer {server.key}"}
        assert _wait(lambda: _ready(url) == 200, 120), server.log.read_text()[-3000:]
        old = _worker_main(server.proc.pid)
        old_group = _group(old.pid)
        assert len(old_group) >= 3, old_group  # main, pool child(ren), embedded beat

        rng = np.random.default_rng(0)
        np.savez(tmp_path / "d.npz", X=rng.normal(size=(200, 5)).astype(np.float32), y=rng.integers(0, 2, 200))
        with open(tmp_path / "d.npz", "rb") as fh:
            ds = httpx.post(f"{url}/api/v1/datasets", headers=headers, files={"file": ("d.npz", fh)}).json()
        running = httpx.post(
            f"{url}/api/v1/analyses",
            headers=headers,
            json={"dataset_id": ds["id"], "estimators": {"tg_slow": {"seconds": 6}}},
        ).json()["id"]
        assert _wait(lambda: _state(url, headers, running)["status"] == "running", 60)

        t0 = time.monotonic()
        os.kill(old.pid, signal.SIGKILL)
        # /readyz says not ready (or the worker is already back) within 10 s
        seen_503 = _wait(lambda: _ready(url) == 503, 10, step=0.1)
        assert seen_503 or _worker_main(server.proc.pid).pid != old.pid, server.log.read_text()[-3000:]
        if seen_503:
            body = httpx.get(url + "/readyz").json() if _ready(url) == 503 else None
            if body is not None:
                assert body["status"] == 503 and "worker" in body["detail"]
        # the old group is gone: no orphaned beat or pool child keeps running
        assert _wait(lambda: not _group(old.pid), 10), [p.cmdline() for p in _group(old.pid)]
        # an analysis posted while the worker is down waits in the queue
        queued = httpx.post(
            f"{url}/api/v1/analyses",
            headers=headers,
            json={"dataset_id": ds["id"], "estimators": {"tg_slow": {"seconds": 0.2}}},
        ).json()["id"]
        # a new worker, ready
        assert _wait(lambda: _ready(url) == 200, 120), server.log.read_text()[-3000:]
        new = _worker_main(server.proc.pid)
        assert new.pid != old.pid
        assert time.monotonic() - t0 < 120
        # nothing stuck: the interrupted one is re-queued (API sweeper) and both succeed
        for aid in (running, queued):
            done = _wait(
                lambda aid=aid: (
                    _state(url, headers, aid)["status"] in ("succeeded", "failed", "cancelled")
                    and _state(url, headers, aid)
                ),
                120,
            )
            assert done and done["status"] == "succeeded", (done, server.log.read_text()[-4000:])
        assert _state(url, headers, running)["attempts"] >= 2
        assert "restart 1" in server.log.read_text()
    finally:
        embedded_server.stop(server)


def test_embedded_beat_dies_with_its_worker_even_without_serve(tmp_path):
    """`taskgauge worker --beat` (the embedded worker's command) SIGKILLed on its own: its beat process is killed
    by the kernel (PR_SET_PDEATHSIG) and its pool child exits, so nothing keeps sending scans to the queue."""
    import subprocess

    from taskgauge.migrate import upgrade

    data = tmp_path / "data"
    data.mkdir()
    upgrade(f"sqlite:///{data / 'taskgauge.db'}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGAUGE_")}
    env.update(
        {
            "TASKGAUGE_DATA_DIR": str(data),
            "TASKGAUGE_DEVICE": "cpu",
            "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")]),
        }
    )
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "worker", "--beat", "--concurrency", "1"],
        env=env,
        cwd=tmp_path,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert _wait(lambda: b" ready." in log.read_bytes(), 120), log.read_text()[-3000:]
        kids = _wait(lambda: len(psutil.Process(proc.pid).children()) >= 2 and psutil.Process(proc.pid).children(), 30)
        assert kids, log.read_text()[-3000:]  # the pool child and the embedded beat
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _gone, alive = psutil.wait_procs(kids, timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
