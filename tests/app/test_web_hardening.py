"""The web surface (issue 15): trusted hosts, security headers, /docs offline, safe `next`, bounded echo, the JSON
body limit, `device: "cuda"` without a gpu consumer, the spec's documented problems, the data dir's modes, and the
key lifecycle (`taskgauge keys list|revoke`). Each test checks the status, the problem document, and that nothing
was left behind."""

from __future__ import annotations

import io
import os
import re
import stat

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from taskgauge import db
from taskgauge.errors import PROBLEM_MEDIA_TYPE

PROBLEM = PROBLEM_MEDIA_TYPE


def is_problem(r, status: int, kind: str | None = None) -> dict:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if kind:
        assert body["type"].endswith("/" + kind), body
    return body


def count(live, model) -> int:
    with live.sessions()() as s:
        return s.scalar(select(func.count()).select_from(model))


def upload(live, n: int = 60) -> str:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, X=rng.normal(size=(n, 5)).astype("float32"), y=np.arange(n) % 3)
    r = live.client.post("/api/v1/datasets", headers=live.auth, files={"file": ("d.npz", buf.getvalue())})
    assert r.status_code == 201, r.text
    return r.json()["id"]


# ------------------------------------------------------------------------------------------------ trusted hosts
@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8765",
        "evil.example",
        "127.0.0.1.evil.example",
        "localhost.evil",
        "[::2]:8000",
        "10.0.0.1:8000",
        "",
    ],
)
def test_foreign_host_is_refused(live, host):
    for path in ("/signin", "/api/v1/datasets", "/docs", "/openapi.json", "/healthz"):
        r = live.client.get(path, headers={"Host": host, **live.auth})
        body = is_problem(r, 400, "untrusted-host")
        assert "TASKGAUGE_ALLOWED_HOSTS" in body["detail"]
        assert r.headers["x-frame-options"] == "DENY"  # refusals carry the headers too


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8765", "LOCALHOST", "[::1]:8000", "127.0.0.1"])
def test_loopback_names_are_accepted(live, host):
    assert live.client.get("/api/v1/datasets", headers={"Host": host, **live.auth}).status_code == 200


def test_allowed_hosts_setting(live_factory):
    live = live_factory(TASKGAUGE_ALLOWED_HOSTS="tg.internal, 127.0.0.1")
    assert live.client.get("/healthz", headers={"Host": "tg.internal:8000"}).status_code == 200
    is_problem(live.client.get("/healthz", headers={"Host": "localhost:8000"}), 400, "untrusted-host")
    live = live_factory(TASKGAUGE_ALLOWED_HOSTS="*")
    assert live.client.get("/healthz", headers={"Host": "anything.example"}).status_code == 200


def test_production_default_accepts_any_host(clean_env):
    from taskgauge.settings import get_settings

    clean_env.setenv("TASKGAUGE_BROKER_URL", "redis://127.0.0.1:6379/0")
    get_settings.cache_clear()
    assert get_settings().allowed_hosts is None
    clean_env.delenv("TASKGAUGE_BROKER_URL")
    get_settings.cache_clear()
    assert get_settings().allowed_hosts == {"localhost", "127.0.0.1", "::1"}


# ------------------------------------------------------------------------------------------------ headers, /docs
def test_security_headers_on_every_response(live):
    from app.dashboard.routes import STATIC_URL

    responses = {
        "page": live.client.get("/"),
        "signin": live.client.get("/signin"),
        "api": live.client.get("/api/v1/datasets", headers=live.auth),
        "401": live.client.get("/api/v1/datasets"),
        "404": live.client.get("/nope"),
        "static": live.client.get(STATIC_URL + "/app.js"),
        "docs": live.client.get("/docs"),
        "openapi": live.client.get("/openapi.json"),
        "413": live.client.post(
            "/api/v1/model-specs", headers={**live.auth, "Content-Type": "application/json"}, content=b" " * (2 << 20)
        ),
    }
    for name, r in responses.items():
        h = r.headers
        assert h["x-frame-options"] == "DENY", name
        assert h["x-content-type-options"] == "nosniff", name
        csp = h["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "script-src 'self';" in csp, name
        assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";")[0], name
    assert responses["signin"].headers["cache-control"] == "no-store"


def test_docs_work_offline(live):
    r = live.client.get("/docs")
    assert r.status_code == 200
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert refs and all(u.startswith("/") and not u.startswith("//") for u in refs), refs  # nothing off-origin
    assert "<script>" not in r.text  # no inline script (CSP)
    for u in refs:
        asset = live.client.get(u)
        assert asset.status_code == 200 and len(asset.content) > 100, u
    bundle = live.client.get("/docs-static/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.content and len(bundle.content) > 500_000
    is_problem(live.client.get("/docs-static/index.html"), 404)  # only the files the page needs
    is_problem(live.client.get("/docs-static/..%2F..%2F__init__.py"), 404)
    assert live.client.get("/redoc").status_code == 404  # ReDoc would load from a CDN: gone
    assert live.client.get("/openapi.json").json()["openapi"].startswith("3.")


# ------------------------------------------------------------------------------------------------ open redirect
@pytest.mark.parametrize(
    "nxt",
    [
        "//evil.example/phish",
        "/\\evil.example",
        "https://evil.example",
        "http:evil",
        "javascript:alert(1)",
        "/\t/evil.example",
        " //evil.example",
        "\\\\evil.example",
        "/\n/evil",
        "data:text/html,x",
        "",
        "/" + "a" * 3000,
    ],
)
def test_next_only_ever_leads_to_this_origin(live, nxt):
    r = live.client.get("/signin", params={"next": nxt})
    assert r.status_code == 200
    assert 'data-next="/"' in r.text, re.findall(r'data-next="[^"]*"', r.text)


@pytest.mark.parametrize("nxt", ["/datasets/abc", "/compare?datasets=a,b", "/reports/x#plots"])
def test_next_keeps_a_path_on_this_origin(live, nxt):
    from html import escape

    r = live.client.get("/signin", params={"next": nxt})
    assert f'data-next="{escape(nxt)}"' in r.text


def test_next_is_escaped(live):
    r = live.client.get("/signin", params={"next": '/x"><script>alert(1)</script>'})
    assert "<script>alert" not in r.text


# ------------------------------------------------------------------------------------------------ echo, body size
def test_problem_documents_echo_a_bounded_prefix(live):
    long_id = "A" * 100_000
    r = live.client.post("/api/v1/analyses", headers=live.auth, json={"dataset_id": long_id, "estimators": {"mle": {}}})
    body = is_problem(r, 404, "not-found")
    assert "A" * 80 in body["detail"] and "A" * 81 not in r.text and len(r.content) < 1000
    r = live.client.get("/api/v1/datasets/" + "B" * 5000, headers=live.auth)
    body = is_problem(r, 404)
    assert "B" * 201 not in r.text and len(r.content) < 1000
    dsid = upload(live)
    r = live.client.post(
        "/api/v1/analyses", headers=live.auth, json={"dataset_id": dsid, "estimators": {"C" * 50_000: {}}}
    )
    assert r.status_code == 422 and "C" * 81 not in r.text and len(r.content) < 2000
    r = live.client.post("/api/v1/analyses", headers=live.auth, json={"dataset_id": dsid, "D" * 50_000: 1})
    assert r.status_code in (201, 202, 422) and "D" * 81 not in r.text  # an unknown key: ignored or refused, not echoed
    assert count(live, db.Analysis) == (1 if r.status_code in (201, 202) else 0)


def test_json_bodies_over_the_limit_get_413(live_factory):
    live = live_factory(TASKGAUGE_MAX_JSON_BODY_KB="4")
    big = {"name": "m", "spec": {"arch": "mlp", "pad": "x" * 5000}}
    r = live.client.post("/api/v1/model-specs", headers=live.auth, json=big)
    body = is_problem(r, 413, "too-large")
    assert "4 KiB" in body["detail"] and "TASKGAUGE_MAX_JSON_BODY_KB" in body["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 1024

    r = live.client.post(
        "/api/v1/model-specs", headers={**live.auth, "Content-Type": "application/json"}, content=chunks()
    )
    is_problem(r, 413, "too-large")
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):  # read whole by Starlette: limited too
        headers = {**live.auth, **({"Content-Type": ctype} if ctype else {})}
        is_problem(live.client.post("/api/v1/model-specs", headers=headers, content=b"a" * 5000), 413)
    assert count(live, db.ModelSpec) == 0  # nothing stored
    small = live.client.post("/api/v1/model-specs", headers=live.auth, json={"name": "m", "spec": {"arch": "mlp"}})
    assert small.status_code == 201, small.text
    # multipart uploads are not this limit's business (TASKGAUGE_MAX_UPLOAD_MB)
    upload(live, n=400)


# ------------------------------------------------------------------------------------------------ cuda
def test_cuda_without_a_gpu_consumer_is_refused(live):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA: the embedded worker would consume the gpu queue")
    dsid = upload(live)
    r = live.client.post(
        "/api/v1/analyses", headers=live.auth, json={"dataset_id": dsid, "estimators": {"mle": {}}, "device": "cuda"}
    )
    body = is_problem(r, 409, "no-gpu-worker")
    assert "gpu" in body["detail"] and "TASKGAUGE_GPU_WORKERS" in body["detail"]
    assert count(live, db.Analysis) == 0  # nothing queued forever
    assert (
        live.client.post(
            "/api/v1/analyses", headers=live.auth, json={"dataset_id": dsid, "estimators": {"mle": {}}, "device": "cpu"}
        ).status_code
        == 202
    )


@pytest.mark.parametrize("setting,status", [("no", 409), ("yes", 202)])
def test_gpu_workers_setting(live_factory, setting, status):
    live = live_factory(TASKGAUGE_GPU_WORKERS=setting, TASKGAUGE_DEVICE="auto")
    dsid = upload(live)
    r = live.client.post(
        "/api/v1/analyses", headers=live.auth, json={"dataset_id": dsid, "estimators": {"mle": {}}, "device": "cuda"}
    )
    assert r.status_code == status, r.text
    assert count(live, db.Analysis) == (1 if status == 202 else 0)


def test_gpu_consumer_seen_through_celery_inspect(monkeypatch):
    """With a broker, `auto` asks the workers which queues they consume (cached)."""
    from taskgauge.settings import Settings
    from workers import gpu

    replies = {"w1@h": [{"name": "default"}]}

    class Inspect:
        def active_queues(self):
            calls.append(1)
            return replies

    calls: list[int] = []
    monkeypatch.setattr("workers.celery_app.celery_app.control.inspect", lambda timeout: Inspect())
    gpu._cache.clear()
    s = Settings(BROKER_URL="redis://127.0.0.1:1/0", DATABASE_URL="sqlite://")
    assert gpu.gpu_queue_consumed(s) is False
    replies["w2@h"] = [{"name": "gpu"}, {"name": "default"}]
    assert gpu.gpu_queue_consumed(s) is False and len(calls) == 1  # cached "no"
    gpu._cache.clear()
    assert gpu.gpu_queue_consumed(s) is True and len(calls) == 2
    gpu._cache.clear()


# ------------------------------------------------------------------------------------------------ the spec
def test_spec_documents_the_problems(live):
    spec = live.client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"400", "413"} <= codes, (method, path, codes)
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in codes, (method, path, codes)
            assert PROBLEM in op["responses"]["413"]["content"], (method, path)
    from app.errors import responses

    assert PROBLEM in responses(429)[429]["content"] and "Retry-After" in responses(429)[429]["description"]
    assert "409" in spec["paths"]["/api/v1/analyses"]["post"]["responses"]


# ------------------------------------------------------------------------------------------------ modes
def test_private_data_dir(tmp_path):
    from app.cli.service import private_data_dir

    d = tmp_path / "data"
    d.mkdir(mode=0o755)
    files = [d / n for n in ("taskgauge.db", "taskgauge.db-wal", "taskgauge.db-shm", "local_api_key")]
    for f in files:
        f.write_text("x")
        f.chmod(0o644)
    (d / "blobs").mkdir()
    private_data_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


# ------------------------------------------------------------------------------------------------ key lifecycle
def test_keys_list_and_revoke(live):
    from app.cli import cli

    runner = CliRunner()
    env = {"TASKGAUGE_DATA_DIR": str(live.data_dir)}
    created = runner.invoke(cli, ["keys", "create", "alice"], env=env)
    assert created.exit_code == 0, created.output
    alice = created.stdout.strip().splitlines()[-1]
    prefix = alice.split("_")[1]
    listed = runner.invoke(cli, ["keys", "list"], env=env)
    assert listed.exit_code == 0 and prefix in listed.stdout and "alice" in listed.stdout
    assert alice.split("_", 2)[2] not in listed.output and live.key.split("_", 2)[2] not in listed.output
    headers = {"Authorization": f"Bearer {alice}"}
    assert live.client.get("/api/v1/datasets", headers=headers).status_code == 200

    revoked = runner.invoke(cli, ["keys", "revoke", prefix], env=env)
    assert revoked.exit_code == 0, revoked.output
    body = is_problem(live.client.get("/api/v1/datasets", headers=headers), 401, "unauthorized")
    assert "revoked" in body["detail"]
    listed = runner.invoke(cli, ["keys", "list"], env=env)
    row = next(line for line in listed.stdout.splitlines() if prefix in line)
    assert "revoked" in row
    # the other key is untouched; revoking by id works too; an unknown key is an error
    assert live.client.get("/api/v1/datasets", headers=live.auth).status_code == 200
    with live.sessions()() as s:
        tester_id = s.scalar(select(db.ApiKey.id).where(db.ApiKey.prefix == live.key.split("_")[1]))
    assert runner.invoke(cli, ["keys", "revoke", tester_id], env=env).exit_code == 0
    assert live.client.get("/api/v1/datasets", headers=live.auth).status_code == 401
    missing = runner.invoke(cli, ["keys", "revoke", "nosuchkey"], env=env)
    assert missing.exit_code == 2 and "keys list" in missing.output


def test_signin_url_command(clean_env, tmp_path):
    from app.cli import cli
    from taskgauge.auth import redeem_signin_token

    r = CliRunner().invoke(cli, ["keys", "signin-url", "--port", "8765"])
    assert r.exit_code == 0, r.output
    url = r.stdout.strip()
    assert url.startswith("http://127.0.0.1:8765/signin#token=")
    data = tmp_path / "data"
    assert stat.S_IMODE((data / "signin_token").stat().st_mode) == 0o600
    token = url.split("#token=", 1)[1]
    assert token not in (data / "signin_token").read_text()  # only its hash is stored
    assert redeem_signin_token(data, token, 60) and not redeem_signin_token(data, token, 60)
    assert os.listdir(data) == []


# ------------------------------------------------------------------------------------------------ 4xx, not 500
@pytest.mark.parametrize("path", ["/api/v1/datasets", "/api/v1/analyses"])
def test_an_overflowing_offset_is_a_client_error(live, path):
    r = live.client.get(path, params={"offset": "99999999999999999999"}, headers=live.auth)
    is_problem(r, 422, "invalid-request")
    assert live.client.get(path, params={"offset": "1000000000"}, headers=live.auth).status_code == 200


def test_a_malformed_multipart_body_is_a_client_error(live):
    boundary = "7eaffdc9b597eacd2e934f36aa69c759"
    body = f"--{boundary}\r\n9!--{boundary}--\r\n".encode()
    r = live.client.post(
        "/api/v1/datasets",
        content=body,
        headers={**live.auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    is_problem(r, 400, "bad-upload")
    assert count(live, db.Dataset) == 0
    assert not [p for p in (live.data_dir / "tmp").rglob("*") if p.is_file()]  # no temp file left
