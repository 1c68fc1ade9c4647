"""The web surface of a real `taskgauge serve` (embedded default) on loopback: the one-time sign-in link on its
console works once, a foreign Host is refused over real HTTP, proxy headers change nothing, DATA_DIR is 0700 and the
database and key files 0600; and a bounded schemathesis run against its live OpenAPI spec finds no server error."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import embedded_server  # noqa: E402

pytestmark = pytest.mark.integration
ST = Path(sys.executable).with_name("st")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web-surface")
    (tmp / "data").mkdir(mode=0o755)  # a data dir that exists with lax modes: serve tightens it
    srv = embedded_server.start(tmp)
    yield srv
    embedded_server.stop(srv)


def raw_get(url: str, host: str, extra: str = "") -> tuple[int, bytes]:
    """A GET with an exact Host header, over a plain socket (no client library rewrites it)."""
    u = httpx.URL(url)
    with socket.create_connection((u.host, u.port), timeout=10) as s:
        s.sendall(f"GET {u.raw_path.decode()} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_modes(server):
    d = server.data_dir
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = [p for p in d.iterdir() if p.name.startswith("taskgauge.db")] + [d / "local_api_key", d / "signin_token"]
    assert any(p.name == "taskgauge.db" for p in files)
    for p in files:
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_foreign_host_is_refused_and_proxy_headers_change_nothing(server):
    for host in ("evil.example:8765", "evil.example", "attacker.test:80"):
        status, body = raw_get(server.url + "/signin", host)
        assert status == 400 and json.loads(body)["type"].endswith("/untrusted-host")
        assert server.key.encode() not in body
    spoof = "X-Forwarded-For: 127.0.0.1\r\nForwarded: for=127.0.0.1;host=localhost\r\nX-Real-IP: 127.0.0.1\r\n"
    status, _ = raw_get(server.url + "/signin", "evil.example", spoof)
    assert status == 400
    status, body = raw_get(server.url + "/signin", "127.0.0.1", spoof)
    assert status == 200 and server.key.encode() not in body and not re.search(rb"tg_[0-9a-f]{12}_", body)


def test_signin_link_from_the_console_works_once(server):
    url = server.signin_url()
    assert url.startswith(server.url + "/signin#token=")
    token = url.split("#token=", 1)[1]
    assert token not in (server.data_dir / "signin_token").read_text()
    page = httpx.get(url.split("#")[0])
    assert page.status_code == 200 and server.key not in page.text and page.headers["cache-control"] == "no-store"
    first = httpx.post(server.url + "/signin/token", json={"token": token})
    assert first.status_code == 200, first.text
    key = first.json()["key"]
    assert key != server.key  # the local key file's key never goes over HTTP
    assert httpx.get(server.url + "/api/v1/datasets", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    again = httpx.post(server.url + "/signin/token", json={"token": token})
    assert again.status_code == 401 and again.headers["content-type"] == "application/problem+json"
    listed = subprocess.run(
        [str(embedded_server.TASKGAUGE), "keys", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "TASKGAUGE_DATA_DIR": str(server.data_dir)},
        timeout=120,
    )
    assert listed.returncode == 0 and "dashboard sign-in" in listed.stdout and key.split("_")[1] in listed.stdout


def test_schemathesis_finds_no_server_error(server, tmp_path):
    """A bounded fuzzing run (`st run`: the examples, coverage and fuzzing phases once, 25 examples per operation,
    a fixed seed) against the live spec. No ``--max-time``: in schemathesis 4.32 it is a budget the run spends, not a
    cap (the fuzzing phase starts over until the time is up), so with it this test always took the whole budget."""
    if not ST.exists():
        pytest.skip("schemathesis is not installed")
    report = tmp_path / "st.json"
    cmd = [
        str(ST),
        "run",
        server.url + "/openapi.json",
        "--checks",
        "not_a_server_error",
        "--header",
        f"Authorization: Bearer {server.key}",
        "--max-examples",
        "25",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--seed",
        "15",
        "--no-color",
        "--phases",
        "examples,coverage,fuzzing",
        "--generation-allow-x00",
        "true",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    out = run.stdout + run.stderr
    tail = out[-6000:]
    assert "not_a_server_error" in out or "passed" in out.lower(), tail
    assert run.returncode == 0, tail
    log = server.log.read_text(errors="replace")
    assert "unhandled error" not in log, log[-4000:]
