"""The dashboard's sign-in page offers the local API key only in the embedded default (SQLite and no broker),
and only to a loopback client of a loopback server; never under PostgreSQL + Redis, even when a key file exists."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from taskgauge.auth import local_key_path
from taskgauge.settings import get_settings

KEY = "tg_0123456789ab_local-secret-for-the-test"


@pytest.fixture
def page(tmp_path, monkeypatch):
    """GET /signin from 127.0.0.1 to 127.0.0.1 (no lifespan: the page needs no database), under given settings."""
    for k in ("TASKGAUGE_DATABASE_URL", "TASKGAUGE_BROKER_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TASKGAUGE_DATA_DIR", str(tmp_path))
    local_key_path(tmp_path).write_text(KEY + "\n")

    def get(**env: str) -> str:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        client = TestClient(create_app(), base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
        resp = client.get("/signin")
        assert resp.status_code == 200
        return resp.text

    yield get
    get_settings.cache_clear()


def test_embedded_default_offers_the_local_key(page):
    assert KEY in page()  # the control: the same page does carry it in the embedded default


@pytest.mark.parametrize("env", [
    {"TASKGAUGE_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/tg", "TASKGAUGE_BROKER_URL": "redis://127.0.0.1:6379/0"},
    {"TASKGAUGE_BROKER_URL": "redis://127.0.0.1:6379/0"},
    {"TASKGAUGE_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/tg"},
], ids=["postgres+redis", "redis", "postgres"])
def test_production_settings_never_offer_it(page, env):
    assert KEY not in page(**env)
