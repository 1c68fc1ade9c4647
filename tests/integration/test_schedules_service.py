"""Schedules (the service the API calls), report history flags and sample thumbnails at the service level, on a database built by the
migrations (SQLite here; the beat/worker test runs on PostgreSQL)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from PIL import Image

from taskgauge import db
from taskgauge.blobs import FileBlobStore
from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.errors import InvalidInput
from taskgauge.services import datasets, reports
from taskgauge.services import schedules as service
from taskgauge.services.schedules import ScheduleError, next_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def session(tmp_path):
    url = f"sqlite:///{tmp_path / 'tg.db'}"
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")
    engine = db.make_engine(url)
    with db.make_session_factory(engine)() as s:
        yield s
    engine.dispose()


def make_owner_dataset(s, tmp_path, *, images: bool = True, name: str = "ds") -> tuple[str, str, Path]:
    owner = db.Owner(id=db.new_id(), name="o")
    s.add(owner)
    s.flush()
    rng = np.random.default_rng(0)
    X = rng.random((6, 1, 4, 4), dtype=np.float32) if images else rng.random((6, 3), dtype=np.float32)
    if images:
        X[2] = np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 15.0  # a known ramp
    data = CanonicalDataset(X=X, y=np.array([0, 1, 0, 1, 0, 1]), classes=["a", "b"], meta={})
    store = FileBlobStore(tmp_path / "blobs").ensure()
    staged = store.stage(data.to_bytes())
    store.publish(staged)
    s.add(db.Blob(sha256=staged.sha256, size=len(data.to_bytes())))
    s.flush()  # no ORM relationships: parents first
    ds = db.Dataset(
        id=db.new_id(),
        owner_id=owner.id,
        name=name,
        filename="x.npz",
        sha256="0" * 64,
        size_bytes=1,
        blob_sha256=staged.sha256,
        n_samples=6,
        shape=list(X.shape),
        n_classes=2,
        classes=["a", "b"],
    )
    s.add(ds)
    s.flush()
    return owner.id, ds.id, tmp_path / "blobs"


def add_report(s, owner_id, dataset_id, when: datetime, results: dict, schedule_id=None) -> str:
    a = db.Analysis(
        id=db.new_id(),
        owner_id=owner_id,
        dataset_id=dataset_id,
        estimators={k: {} for k in results},
        status=db.SUCCEEDED,
        schedule_id=schedule_id,
        created_at=when,
        updated_at=when,
    )
    s.add(a)
    s.flush()
    rid = db.new_id()
    a.report_id = rid
    s.add(
        db.Report(
            id=rid,
            owner_id=owner_id,
            analysis_id=a.id,
            dataset_id=dataset_id,
            created_at=when,
            document={"report_id": rid, "created_at": when.isoformat(), "results": results},
        )
    )
    s.flush()
    return rid


def test_create_list_delete_and_validation(session, tmp_path):
    owner, ds, _ = make_owner_dataset(session, tmp_path)
    now = datetime(2024, 3, 30, 12, 0, tzinfo=UTC)
    sch = service.create_schedule(
        session,
        owner_id=owner,
        dataset_id=ds,
        cron="0 3 * * *",
        timezone="Europe/Berlin",
        estimators={"mle": {"k": 10}},
        now=now,
    )
    # 03:00 Berlin on 31 March 2024 is after the switch to summer time (UTC+2) → 01:00 UTC
    assert sch.next_run_at == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert sch.estimators == {"mle": {"k": 10}}
    assert [s.id for s in service.list_schedules(session, owner)] == [sch.id]
    assert service.list_schedules(session, "someone-else") == []

    with pytest.raises(ScheduleError, match="invalid cron expression"):
        service.create_schedule(session, owner_id=owner, dataset_id=ds, cron="every day")
    with pytest.raises(ScheduleError, match="unknown time zone 'Mars/Base'"):
        service.create_schedule(session, owner_id=owner, dataset_id=ds, cron="0 3 * * *", timezone="Mars/Base")
    with pytest.raises(ScheduleError, match="nope"):
        service.create_schedule(session, owner_id=owner, dataset_id=ds, cron="0 3 * * *", estimators={"nope": {}})
    with pytest.raises(service.NotFound):
        service.create_schedule(session, owner_id="someone-else", dataset_id=ds, cron="0 3 * * *")
    with pytest.raises(service.NotFound):
        service.delete_schedule(session, "someone-else", sch.id)
    service.delete_schedule(session, owner, sch.id)
    assert service.list_schedules(session, owner) == []


def test_next_run_six_fields_and_dst():
    t = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert next_run("* * * * * */5", "UTC", t) == datetime(2024, 1, 1, 0, 0, 5, tzinfo=UTC)
    # New York 09:00 is 14:00 UTC in winter and 13:00 UTC in summer
    assert next_run("0 9 * * *", "America/New_York", datetime(2024, 1, 10, tzinfo=UTC)).hour == 14
    assert next_run("0 9 * * *", "America/New_York", datetime(2024, 7, 10, tzinfo=UTC)).hour == 13


def test_history_flags_version_change_and_drift(session, tmp_path):
    owner, ds, _ = make_owner_dataset(session, tmp_path)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    r = lambda v, ci, ver="1.0": {"value": v, "ci": ci, "version": ver}  # noqa: E731
    first = add_report(session, owner, ds, t0, {"twonn": r(5.0, [4.8, 5.2]), "mle": r(4.0, None)})
    same = add_report(session, owner, ds, t0 + timedelta(days=1), {"twonn": r(5.1, [4.9, 5.3]), "mle": r(9.0, None)})
    upgraded = add_report(
        session, owner, ds, t0 + timedelta(days=2), {"twonn": r(5.15, [4.95, 5.35], "1.1"), "mle": r(9.0, None)}
    )
    drifted = add_report(
        session, owner, ds, t0 + timedelta(days=3), {"twonn": r(6.0, [5.9, 6.1], "1.1"), "mle": r(9.0, None, "2.0")}
    )
    h = reports.dataset_history(session, owner, ds)
    assert [x["report_id"] for x in h] == [drifted, upgraded, same, first]  # newest first
    flags = {x["report_id"]: x["flags"] for x in h}
    assert flags[first] == {"version_change": [], "drift": []}
    assert flags[same] == {"version_change": [], "drift": []}  # mle moved 4 → 9 but states no CI: not judged
    assert flags[upgraded] == {"version_change": ["twonn"], "drift": []}  # new version, value inside the old CI
    assert flags[drifted] == {"version_change": ["mle"], "drift": ["twonn"]}  # 6.0 outside [4.95, 5.35]
    assert h[0]["values"]["twonn"] == {"value": 6.0, "ci": [5.9, 6.1], "version": "1.1"}
    assert all(x["trigger"] == "manual" for x in h)
    with pytest.raises(service.NotFound):
        reports.dataset_history(session, "someone-else", ds)


def test_sample_png_renders_the_stored_image(session, tmp_path):
    owner, ds, blobs = make_owner_dataset(session, tmp_path)
    png = datasets.sample_png(session, FileBlobStore(blobs), owner, ds, 2, size=16)
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (16, 16)  # 4×4 upscaled ×4, nearest neighbour
    assert img[0, 0] == 0 and img[-1, -1] == 255 and img[0, 4] == 17  # the ramp 0..15 → 0..255
    with pytest.raises(service.NotFound):
        datasets.sample_png(session, FileBlobStore(blobs), owner, ds, 6)
    owner2, tab, tblobs = make_owner_dataset(session, tmp_path / "t", images=False)
    with pytest.raises(InvalidInput, match="not an image dataset"):
        datasets.sample_png(session, FileBlobStore(tblobs), owner2, tab, 0)
