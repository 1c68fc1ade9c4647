"""The dashboard's sign-in page never contains a key — in the embedded default, under PostgreSQL and/or Redis
settings, for loopback and other clients, whatever proxy headers say. The embedded default signs a browser in with
the one-time link `taskgauge serve` prints: its token is traded once for a new key of the local owner; a second use,
a wrong or expired token, or any token under production settings gets 401."""

from __future__ import annotations

import json
import re
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from taskgauge.auth import issue_signin_token, local_key_path, signin_token_path
from taskgauge.settings import get_settings

KEY = "tg_0123456789ab_local-secret-for-the-test"
KEYLIKE = re.compile(r"tg_[0-9a-f]{12}_")
SPOOF = {"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1;host=127.0.0.1", "X-Real-IP": "127.0.0.1"}
PRODUCTION = [
    {
        "TASKGAUGE_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/tg",
        "TASKGAUGE_BROKER_URL": "redis://127.0.0.1:6379/0",
    },
    {"TASKGAUGE_BROKER_URL": "redis://127.0.0.1:6379/0"},
    {"TASKGAUGE_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/tg"},
]


@pytest.fixture
def page(clean_env, tmp_path):
    """GET /signin (no lifespan: the page needs no database) under given settings, from a given client address."""
    data = tmp_path / "data"
    data.mkdir()
    local_key_path(data).write_text(KEY + "\n")

    def get(client: str = "127.0.0.1", headers: dict[str, str] | None = None, **env: str):
        for k, v in env.items():
            clean_env.setenv(k, v)
        get_settings.cache_clear()
        c = TestClient(create_app(), base_url="http://127.0.0.1:8000", client=(client, 50000))
        resp = c.get("/signin?next=/datasets/x", headers=headers or {})
        assert resp.status_code == 200
        return resp

    return get


@pytest.mark.parametrize("env", [{}, *PRODUCTION], ids=["embedded", "postgres+redis", "redis", "postgres"])
@pytest.mark.parametrize("client", ["127.0.0.1", "::1", "192.0.2.7"])
def test_the_page_never_contains_a_key(page, env, client):
    for headers in ({}, SPOOF):
        resp = page(client, headers, **env)
        assert KEY not in resp.text and "local-secret" not in resp.text
        assert not KEYLIKE.search(resp.text)
        assert resp.headers["cache-control"] == "no-store"


def test_embedded_page_points_to_the_one_time_link_and_production_does_not(page):
    assert "taskgauge keys signin-url" in page().text
    assert "taskgauge keys signin-url" not in page(**PRODUCTION[0]).text


def test_one_time_link_works_once(live):
    token = issue_signin_token(live.data_dir)
    wrong = live.client.post("/signin/token", json={"token": token[:-2] + "xx"})
    assert wrong.status_code == 401 and wrong.json()["type"].endswith("/bad-signin-token")
    first = live.client.post("/signin/token", json={"token": token}, headers=SPOOF)  # a wrong try did not spend it
    assert first.status_code == 200, first.text
    assert first.headers["cache-control"] == "no-store"
    key = first.json()["key"]
    assert key != live.key  # a new key of its own, which `keys list` shows and `keys revoke` revokes
    assert live.client.get("/api/v1/datasets", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    second = live.client.post("/signin/token", json={"token": token})
    assert second.status_code == 401
    body = second.json()
    assert body["status"] == 401 and body["title"] == "Sign-in link not valid" and token not in second.text
    assert not signin_token_path(live.data_dir).exists()  # nothing left behind
    assert not [p.name for p in live.data_dir.iterdir() if p.name.startswith(".signin_token")]


def test_a_new_link_replaces_the_old_one(live):
    old = issue_signin_token(live.data_dir)
    new = issue_signin_token(live.data_dir)
    assert live.client.post("/signin/token", json={"token": old}).status_code == 401
    assert live.client.post("/signin/token", json={"token": new}).status_code == 200


def test_an_expired_link_is_refused(live):
    token = issue_signin_token(live.data_dir)
    path = signin_token_path(live.data_dir)
    stored = json.loads(path.read_text())
    stored["issued_at"] = time.time() - get_settings().SIGNIN_TOKEN_TTL_S - 1
    path.write_text(json.dumps(stored))
    r = live.client.post("/signin/token", json={"token": token})
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("env", PRODUCTION[1:], ids=["redis", "postgres-url-only"])
def test_production_settings_never_trade_a_token(clean_env, tmp_path, env):
    """Under a broker or PostgreSQL the route refuses before it touches the database (none is running here)."""
    from contextlib import asynccontextmanager

    for k, v in env.items():
        clean_env.setenv(k, v)
    get_settings.cache_clear()
    data = get_settings().DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    token = issue_signin_token(data)
    app = create_app()

    class Fake:  # the route needs app.state.taskgauge; give it the settings only (no engine)
        settings = get_settings()

    app.state.taskgauge = Fake()

    @asynccontextmanager
    async def no_lifespan(_app):
        yield

    app.router.lifespan_context = no_lifespan
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        r = c.post("/signin/token", json={"token": token})
    assert r.status_code == 401 and signin_token_path(data).exists()
