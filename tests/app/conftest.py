"""A live app (lifespan run) over a migrated SQLite database in a temp DATA_DIR, for the web-surface tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

BASE = "http://127.0.0.1:8000"


@dataclass
class Live:
    client: TestClient
    data_dir: Path
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def sessions(self):
        return self.client.app.state.taskgauge.sessions


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No TASKGAUGE_* setting from outside; DATA_DIR in tmp_path; settings re-read before and after."""
    import os

    from taskgauge.settings import get_settings

    for k in [k for k in os.environ if k.startswith("TASKGAUGE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("TASKGAUGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TASKGAUGE_DEVICE", "cpu")
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture
def live_factory(clean_env, tmp_path):
    """``live(**env)``: set TASKGAUGE_* env, migrate the SQLite database, make a key, start the app (lifespan)."""
    from app.main import create_app
    from taskgauge import db, migrate
    from taskgauge.auth import create_key
    from taskgauge.settings import get_settings

    clients: list[TestClient] = []

    def live(**env: str) -> Live:
        for k, v in env.items():
            clean_env.setenv(k, v)
        get_settings.cache_clear()
        settings = get_settings()
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(settings.DATABASE_URL)
        engine = db.make_engine(settings.DATABASE_URL)
        try:
            with db.make_session_factory(engine)() as s, s.begin():
                _row, key = create_key(s, "tester")
        finally:
            engine.dispose()
        client = TestClient(create_app(), base_url=BASE)
        client.__enter__()
        clients.append(client)
        return Live(client, settings.DATA_DIR, key)

    yield live
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def live(live_factory) -> Live:
    return live_factory()
