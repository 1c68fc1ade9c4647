"""Scheduled re-analysis end to end on the production stack: PostgreSQL, Redis, a real `taskgauge worker` and
TWO `taskgauge beat` processes, with a 4-second cron. Each due time must produce exactly one analysis; the
dataset history marks them as scheduled and shows version-change and drift flags."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TASKGAUGE = Path(sys.executable).with_name("taskgauge")
PERIOD = 4  # seconds between due times: cron "*/4" in the seconds field


def _services_up() -> bool:
    try:
        import psycopg
        import redis

        psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", connect_timeout=2).close()
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def stack(tmp_path):
    if not _services_up():
        pytest.skip("PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 are needed")
    import psycopg

    name = f"tg_sched_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    redis_db = random.randint(1, 15)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGAUGE_")}
    env.update(
        {
            "TASKGAUGE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
            "TASKGAUGE_BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
            "TASKGAUGE_DATA_DIR": str(tmp_path / "data"),
            "TASKGAUGE_DEVICE": "cpu",
        }
    )
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()
    subprocess.run([str(TASKGAUGE), "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    procs: list[subprocess.Popen] = []

    def spawn(*args: str, log: str) -> subprocess.Popen:
        p = subprocess.Popen(
            [str(TASKGAUGE), *args],
            env=env,
            cwd=tmp_path,
            start_new_session=True,
            stdout=(tmp_path / log).open("wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(p)
        return p

    yield {"env": env, "spawn": spawn, "tmp": tmp_path}
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _seed(session, data_dir: Path):
    """An owner, a small labelled dataset (digits) in the blob store and a 4-second schedule."""
    from taskgauge import db
    from taskgauge.blobs import FileBlobStore
    from taskgauge.datasets.canonical import CanonicalDataset
    from taskgauge.services import schedules as service

    with np.load(ROOT / "examples" / "digits.npz", allow_pickle=False) as d:
        X, y = d["X"][:200], d["y"][:200]
    data = CanonicalDataset(X=X.astype("float32"), y=y.astype("int64"), classes=[str(i) for i in range(10)], meta={})
    raw = data.to_bytes()
    store = FileBlobStore(data_dir / "blobs").ensure()
    staged = store.stage(raw)
    store.publish(staged)
    owner = db.Owner(id=db.new_id(), name="sched-test")
    session.add(owner)
    session.flush()
    session.add(db.Blob(sha256=staged.sha256, size=len(raw)))
    session.flush()
    ds = db.Dataset(
        id=db.new_id(),
        owner_id=owner.id,
        name="digits-200",
        filename="digits.npz",
        sha256="0" * 64,
        size_bytes=len(raw),
        blob_sha256=staged.sha256,
        n_samples=200,
        shape=[200, 64],
        n_classes=10,
        classes=data.classes,
    )
    session.add(ds)
    session.flush()
    sched = service.create_schedule(
        session,
        owner_id=owner.id,
        dataset_id=ds.id,
        cron=f"* * * * * */{PERIOD}",
        estimators={"twonn": {"variant": "ml", "decimation": False}},
        min_interval_s=0,
    )  # a seconds-level schedule, allowed in this test
    session.commit()
    return owner.id, ds.id, sched.id


def _wait_for_log(path: Path, needle: bytes, timeout: float = 120.0) -> None:
    """Wait until a spawned process has written ``needle`` to its log (its start-up can take seconds on a loaded
    machine; due times before it would be served late, as one catch-up analysis, and not counted fairly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_bytes():
            return
        time.sleep(0.2)
    raise AssertionError(f"{path.name} never showed {needle!r}:\n" + path.read_text(errors="replace")[-2000:])


def test_two_beats_one_analysis_per_due_time_and_history_flags(stack):
    from taskgauge import db
    from taskgauge.services import reports

    env = stack["env"]
    engine = db.make_engine(env["TASKGAUGE_DATABASE_URL"])
    sessions = db.make_session_factory(engine)
    with sessions() as s:
        owner, ds, sid = _seed(s, Path(env["TASKGAUGE_DATA_DIR"]))

    stack["spawn"]("worker", log="worker.log")
    _wait_for_log(stack["tmp"] / "worker.log", b" ready.")  # scans run on the worker: count due times from here
    t_spawn = db.utcnow()
    beats = [stack["spawn"]("beat", "--every", "0.5", log=f"beat{i}.log") for i in (1, 2)]
    for i in (1, 2):
        _wait_for_log(stack["tmp"] / f"beat{i}.log", b"beat: Starting")
    t_start = db.utcnow()
    time.sleep(PERIOD * 4 + 2)
    for b in beats:  # stop scheduling; let the worker finish what was created
        os.killpg(b.pid, signal.SIGTERM)
    for b in beats:
        b.wait(timeout=20)
    t_stop = db.utcnow()

    deadline = time.monotonic() + 90
    while True:
        with sessions() as s:
            rows = s.execute(
                select(db.Analysis.id, db.Analysis.created_at, db.Analysis.status)
                .where(db.Analysis.schedule_id == sid)
                .order_by(db.Analysis.created_at)
            ).all()
        if rows and all(r.status in db.TERMINAL_STATES for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    logs = "\n".join((stack["tmp"] / f).read_text(errors="replace")[-2000:] for f in ("worker.log", "beat1.log"))
    assert all(r.status == db.SUCCEEDED for r in rows), (rows, logs)

    # Due times are the multiples of PERIOD seconds; a scan runs within ~0.5 s of one, so each analysis's
    # creation time falls in the slot of its due time. Exactly one analysis per due time: distinct slots …
    slots = [int(r.created_at.timestamp()) // PERIOD for r in rows]
    assert len(slots) == len(set(slots)), f"two analyses for one due time: {[r.created_at for r in rows]}"
    # … and no due time skipped between the first and the last one served.
    assert slots == list(range(slots[0], slots[0] + len(slots)))

    def n_due(since, until) -> int:  # due times in (since, until]
        return len([t for t in range(int(since.timestamp()) + 1, int(until.timestamp()) + 1) if t % PERIOD == 0])

    # Every due time while both beats were surely up is served (the last one may be cut off by the SIGTERM).
    # The beats may also serve due times between their spawn and t_start, and one catch-up analysis for those
    # missed before the spawn (a beat serves missed due times as one analysis, never as several).
    lower, upper = n_due(t_start, t_stop) - 1, n_due(t_spawn, t_stop) + 1
    assert lower <= len(rows) <= upper, (len(rows), lower, upper)
    assert len(rows) >= 3

    # History: every report is marked as scheduled; same data + same version → no flags.
    with sessions() as s:
        hist = reports.dataset_history(s, owner, ds)
    assert len(hist) == len(rows)
    assert all(h["trigger"] == "schedule" and h["schedule_id"] == sid for h in hist)
    assert all(h["flags"] == {"version_change": [], "drift": []} for h in hist)
    ci = hist[0]["values"]["twonn"]["ci"]
    assert ci[0] < hist[0]["values"]["twonn"]["value"] < ci[1]

    # Pretend the oldest report came from an older twonn version with a value far outside today's CI: the next
    # report is flagged as a re-analysis after an upgrade, with drift.
    with sessions() as s:
        oldest = s.get(db.Report, hist[-1]["report_id"])
        doc = dict(oldest.document)
        entry = dict(doc["results"]["twonn"])
        entry.update(
            version="0.9",
            value=entry["value"] + 5 * (ci[1] - ci[0]) + 1.0,
            ci=[entry["value"] + 4 * (ci[1] - ci[0]) + 1.0, entry["value"] + 6 * (ci[1] - ci[0]) + 1.0],
        )
        doc["results"] = {**doc["results"], "twonn": entry}
        oldest.document = doc
        s.commit()
        hist2 = reports.dataset_history(s, owner, ds)
    assert hist2[-2]["flags"] == {"version_change": ["twonn"], "drift": ["twonn"]}
    assert all(h["flags"] == {"version_change": [], "drift": []} for h in hist2[:-2])
    engine.dispose()
