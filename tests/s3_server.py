"""A local S3-compatible server for the tests: moto's standalone server on loopback.

``.ci/run`` starts one (``moto_server -H 127.0.0.1``) and exports its URL as ``TASKGAUGE_TEST_S3_ENDPOINT``; without
it, :func:`endpoint` starts a private one on a free port for this test process (stopped at exit). Each test that
needs a bucket makes its own (:func:`new_bucket`), so tests never see each other's objects.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from functools import lru_cache

import pytest

ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    import httpx

    try:
        httpx.get(url + "/moto-api/", timeout=1)
        return True
    except httpx.HTTPError:
        return False


@lru_cache(maxsize=1)
def _endpoint() -> str | None:
    url = os.environ.get("TASKGAUGE_TEST_S3_ENDPOINT", "").rstrip("/")
    if url and _answers(url):
        return url
    try:
        import moto.server  # noqa: F401  (moto[server]: the test extra)
    except ImportError:
        return None
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)

    atexit.register(stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if _answers(url):
            return url
        time.sleep(0.1)
    stop()
    return None


def endpoint() -> str:
    """The S3 endpoint URL; skips the calling test when no S3-compatible server can be had."""
    url = _endpoint()
    if url is None:
        pytest.skip("no local S3 server: install the test extra (moto[server]) or set TASKGAUGE_TEST_S3_ENDPOINT")
    return url


def client(url: str | None = None):
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=url or endpoint(),
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def new_bucket(url: str | None = None) -> str:
    name = f"tg-test-{uuid.uuid4().hex[:16]}"
    client(url).create_bucket(Bucket=name)
    return name


def objects(bucket: str, url: str | None = None) -> dict[str, str]:
    """Every object in ``bucket``, whatever its key: ``{key: ETag}`` (independent of taskgauge's own listing)."""
    out: dict[str, str] = {}
    for page in client(url).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["ETag"]
    return out


def settings_env(bucket: str, prefix: str = "blobs", url: str | None = None) -> dict[str, str]:
    """The TASKGAUGE_* settings that put the blob store into ``bucket``."""
    return {
        "TASKGAUGE_BLOB_URL": f"s3://{bucket}/{prefix}",
        "TASKGAUGE_S3_ENDPOINT_URL": url or endpoint(),
        "TASKGAUGE_S3_REGION": REGION,
        "TASKGAUGE_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "TASKGAUGE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
    }
