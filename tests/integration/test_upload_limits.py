"""Issue 15, uploads and stored data, against a real API process on both stacks (embedded SQLite and
PostgreSQL + Redis): the tiny-file bombs and malformed forms get 4xx problem documents and leave nothing behind,
the API process's peak RSS (``/proc/PID/status`` VmHWM, reset through ``clear_refs`` before each request) stays
within 2 × the upload's materialised size + 256 MB for every input kind, four concurrent uploads at the size
limit stay under the stated memory (API + ingest children), thumbnails read one row, the same data under two
names is stored once, lists are summaries, echoed ids are cut, JSON bodies are limited, and a SIGKILLed upload's
temp files are swept at the next start.

Small limits keep it quick (an 8 MB upload limit, so 512 MB of expansion; 512 MB per ingest child, two at a time);
the mechanism is the one the defaults use.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
import service_stack
from sqlalchemy import create_engine, func, select

from taskgauge import db
from taskgauge.blobs import FileBlobStore, TempLock

PROBLEM = "application/problem+json"
MB = 1024 * 1024
INGEST_MEMORY_MB = 512
CONCURRENT = 2
SLACK = 256 * MB  # the "+ 256 MB" of the memory line


@pytest.fixture(scope="module", params=["embedded", "pg-redis"])
def stack(request, tmp_path_factory):
    kind = request.param
    if kind == "pg-redis" and not (service_stack.postgres_up() and service_stack.redis_available()):
        pytest.skip("PostgreSQL on 127.0.0.1:5432 and redis-server are needed for the pg-redis stack")
    s = service_stack.build(
        kind,
        tmp_path_factory.mktemp(f"limits-{kind}"),
        extra_env={
            "TASKGAUGE_MAX_UPLOAD_MB": "8",
            "TASKGAUGE_MAX_CONCURRENT_INGESTS": str(CONCURRENT),
            "TASKGAUGE_INGEST_QUEUE_S": "300",
            "TASKGAUGE_INGEST_MEMORY_MB": str(INGEST_MEMORY_MB),
            "TASKGAUGE_MAX_JSON_BODY_KB": "64",
        },
    )
    try:
        s.start(0, keys=("carol",))
        s.key = s.carol_key
        yield s
    except BaseException:
        print(s.tail(), file=sys.stderr)
        raise
    finally:
        s.stop()


@pytest.fixture
def client(stack):
    with httpx.Client(
        base_url=stack.api_url + "/api/v1", headers={"Authorization": f"Bearer {stack.key}"}, timeout=300
    ) as c:
        yield c


# ------------------------------------------------------------------------------------------ helpers


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class ApiPeak:
    """The API process's peak RSS above its level when the block started (VmHWM after ``clear_refs`` 5)."""

    def __init__(self, stack) -> None:
        self.pid = stack.api.pid

    def __enter__(self) -> ApiPeak:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS
        except OSError as exc:  # a sandbox without clear_refs: the peak since start is an upper bound
            warnings.warn(f"cannot reset the API's peak RSS ({exc}); using its peak since start", stacklevel=2)
        self.idle = _status(self.pid, "VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.above_idle = _status(self.pid, "VmHWM") - self.idle


def _count_rows(stack, model) -> int:
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(model)).scalar_one())
    finally:
        engine.dispose()


def _leftovers(stack) -> dict:
    blobs = FileBlobStore(stack.data_dir / "blobs")
    return {
        "rows": _count_rows(stack, db.Dataset),
        "blob_rows": _count_rows(stack, db.Blob),
        "blobs": [p.name for p in blobs.files()],
        "tmp": sorted(str(p) for p in (stack.data_dir / "tmp" / "uploads").glob("*"))
        + [str(p) for p in blobs.temp_files()],
    }


def _post(client, filename: str, payload: bytes, **fields):
    return client.post(
        "/datasets",
        files={"file": (filename, payload, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
    )


def _npy_header(descr: str, shape: tuple) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _lie_about_size(data: bytes, declared: int) -> bytes:
    """Rewrite every uncompressed-size field (local headers and central directory) to ``declared``."""
    import struct

    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = 0
        while (i := out.find(sig, i)) != -1:
            struct.pack_into("<I", out, i + off, declared)
            i += 4
    return bytes(out)


def _bombs() -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cases = []
    cases.append(pytest.param("u0.npy", _npy_header("<U0", (2_500_000, 10, 10, 3)), 422, id="npy-U0-128-bytes"))
    cases.append(pytest.param("neg.npy", _npy_header("<f4", (-7, 3)), 422, id="npy-negative-dims"))
    cases.append(pytest.param("huge.npy", _npy_header("<f8", (2**62, 2**62)), 413, id="npy-overflowing-dims"))
    values = pa.array(np.zeros(1_000_000))
    col = pa.ListArray.from_arrays(
        pa.array([0, 1_000_000, 2_000_000, 3_000_000], pa.int32()), pa.concat_arrays([values, values, values])
    )
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": col}), buf)
    cases.append(pytest.param("lists.parquet", buf.getvalue(), 422, id="parquet-list-column"))
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cls/a.png", bytes(4 * MB))
    cases.append(
        pytest.param("big.zip", _lie_about_size(zbuf.getvalue(), int(1.81 * 1024**3)), 413, id="zip-1.81GiB-a.png")
    )
    nbuf = io.BytesIO()
    with zipfile.ZipFile(nbuf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in (("X", np.zeros((6, 2), np.float32)), ("y", np.arange(6) % 2)):
            b = io.BytesIO()
            np.save(b, arr)
            zf.writestr(name + ".npy", b.getvalue())
        zf.writestr("classes.npy", _npy_header("<U1", (50_000_000,)))
    cases.append(pytest.param("classes.npz", nbuf.getvalue(), 413, id="npz-5e7-class-names"))
    row = ",".join(["0"] * 1_000_000)
    cases.append(pytest.param("wide.csv", ("\n".join([row] * 3) + "\n").encode(), 413, id="csv-1M-columns"))
    return cases


BOMBS = _bombs()


@pytest.mark.parametrize("filename, payload, status", BOMBS)
def test_bombs_are_refused_within_the_memory_line_and_leave_nothing(stack, client, filename, payload, status):
    before = _leftovers(stack)
    with ApiPeak(stack) as peak:
        r = _post(client, filename, payload)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and filename in body["detail"]
    assert body["type"].startswith("https://taskgauge.dev/problems/")
    assert _leftovers(stack) == before
    # nothing accepted, so the line is 2 × 0 + 256 MB
    assert peak.above_idle <= SLACK, peak.above_idle / MB


# ------------------------------------------------------------------------------- every input kind


def _solid_png(rgb: tuple[int, int, int], side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), rgb).save(buf, "PNG")
    return buf.getvalue()


def _kinds() -> list:
    """(filename, bytes, materialised bytes of the canonical X) per input kind, each under the 8 MB limit."""
    rng = np.random.default_rng(0)
    out = []
    X = rng.normal(size=(2000, 960)).astype(np.float32)  # 7.3 MB, does not compress
    b = io.BytesIO()
    np.save(b, X)
    out.append(pytest.param("dense.npy", b.getvalue(), X.nbytes, id="npy"))
    Z = np.zeros((2048, 32768), np.float32)  # 256 MB of zeros in ~250 KB
    Z[:, 0] = np.arange(2048)
    b = io.BytesIO()
    np.savez_compressed(b, X=Z, y=np.arange(2048) % 4)
    out.append(pytest.param("zeros.npz", b.getvalue(), Z.nbytes, id="npz"))
    n = 500_000
    csv = "a,b,c,d,label\n" + "0,1,2,3,x\n" * n  # 5 MB; int columns -> float32
    out.append(pytest.param("ints.csv", csv.encode(), n * 4 * 4, id="csv"))
    T = pd.DataFrame({f"f{i}": np.zeros(2_000_000) for i in range(4)})  # float64: 64 MB, kept float64
    b = io.BytesIO()
    T.to_parquet(b)
    out.append(pytest.param("zeros.parquet", b.getvalue(), 2_000_000 * 4 * 8, id="parquet"))
    zb = io.BytesIO()
    side, n_img = 128, 400
    with zipfile.ZipFile(zb, "w") as zf:
        for i in range(n_img):
            zf.writestr(f"c{i % 4}/{i:04d}.png", _solid_png((i % 256, (3 * i) % 256, (7 * i) % 256), side))
    out.append(pytest.param("solid.zip", zb.getvalue(), n_img * 3 * side * side * 4, id="image-zip"))
    return out


KINDS = _kinds()


@pytest.mark.parametrize("filename, payload, materialised", KINDS)
def test_each_input_kind_stays_within_twice_its_materialised_size(stack, client, filename, payload, materialised):
    assert len(payload) <= 8 * MB
    with ApiPeak(stack) as peak:
        r = _post(client, filename, payload)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert peak.above_idle <= 2 * materialised + SLACK, (peak.above_idle / MB, materialised / MB)
    blob = FileBlobStore(stack.data_dir / "blobs").path(ds["blob_sha256"])
    assert blob.stat().st_size >= materialised  # the data really was materialised (by the ingest child)
    if filename.endswith(".zip"):
        # a thumbnail reads one row of the stored file, never the dataset
        with ApiPeak(stack) as thumb:
            png = client.get(f"/datasets/{ds['id']}/samples/{ds['n_samples'] - 1}.png")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert thumb.above_idle <= 32 * MB < materialised, thumb.above_idle / MB
    assert client.delete(f"/datasets/{ds['id']}").status_code == 204
    assert _leftovers(stack)["tmp"] == []


def test_four_concurrent_uploads_at_the_size_limit_stay_under_the_memory_setting(stack, client):
    rng = np.random.default_rng(1)
    payloads = []
    for _ in range(4):  # just under 8 MB each, 200 MB materialised each, all different
        X = np.zeros((1600, 32768), np.float32)
        X[:56] = rng.normal(size=(56, 32768))  # 7.3 MB of noise that does not compress
        b = io.BytesIO()
        np.savez_compressed(b, X=X)
        payloads.append(b.getvalue())
        assert 6 * MB < len(payloads[-1]) <= 8 * MB
    api = psutil.Process(stack.api.pid)
    idle = api.memory_info().rss
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                kids = api.children(recursive=True)
                total = api.memory_info().rss + sum(k.memory_info().rss for k in kids if k.is_running())
                samples.append((total, len(kids)))
            except psutil.Error:
                pass
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            rs = list(pool.map(lambda p: _post(client, "near-limit.npz", p), payloads))
    finally:
        done.set()
        t.join()
    assert [r.status_code for r in rs] == [201] * 4, [r.text for r in rs if r.status_code != 201]
    peak_total = max(s[0] for s in samples)
    stated = idle + SLACK + CONCURRENT * INGEST_MEMORY_MB * MB
    print(
        f"\nfour uploads at the limit ({stack.kind}): API + ingest children peaked at {peak_total / MB:.0f} MB "
        f"(API idle {idle / MB:.0f} MB; stated {stated / MB:.0f} MB; {len(samples)} samples)"
    )
    assert peak_total <= stated, (peak_total / MB, stated / MB)
    assert max(s[1] for s in samples) <= CONCURRENT  # never more ingest children than slots
    for r in rs:
        assert client.delete(f"/datasets/{r.json()['id']}").status_code == 204
    assert _leftovers(stack)["tmp"] == []


# --------------------------------------------------------------------------------- forms and echoes


def test_twenty_thousand_form_fields_get_400_and_leave_nothing(stack, client):
    # the 20,000 fields of 64 KB would be 1.3 GB; 400 of them show the same cap (16 parts)
    fields = {f"f{i}": "x" * 65_000 for i in range(400)}
    before = _leftovers(stack)
    with ApiPeak(stack) as peak:
        r = client.post("/datasets", files={"file": ("a.npy", b"\x93NUMPY", "application/octet-stream")}, data=fields)
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["title"] == "Too many form parts"
    assert _leftovers(stack) == before
    assert peak.above_idle <= 64 * MB


@pytest.mark.parametrize(
    "body, ctype, title",
    [
        (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.npy"\r\n\r\nxx\r\n--b\r\nbroken',
            "multipart/form-data; boundary=b",
            "Malformed multipart body",
        ),
        (b"garbage before any boundary" * 10, "multipart/form-data; boundary=zz", "Malformed multipart body"),
        (
            b"--b\r\nBadHeaderNoColon\r\n\r\nxx\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "Malformed multipart body",
        ),
        (
            b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nxx\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
            "No file in the upload",
        ),
        # python-multipart refuses an oversized header line itself ("Maximum header size exceeded")
        (
            b"--b\r\n" + b"X-Long: " + b"h" * 20_000 + b"\r\n\r\nxx\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "Malformed multipart body",
        ),
        (
            b"--b\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"h" * 1200) for i in range(7)) + b"\r\nxx\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "Form part headers too large",
        ),
    ],
)
def test_malformed_multipart_is_400(stack, client, body, ctype, title):
    before = _leftovers(stack)
    r = client.post("/datasets", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["title"] == title
    assert _leftovers(stack) == before


def test_long_ids_are_not_echoed_and_json_bodies_are_limited(stack, client):
    long_id = "x" * 20_000
    r = client.get(f"/datasets/{long_id}")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert len(r.content) < 2_000 and "20,000 characters" in r.json()["detail"]
    r = client.post("/analyses", json={"dataset_id": "y" * 30_000})  # under the 64 KB body limit
    assert r.status_code == 404 and len(r.content) < 2_000, r.text
    r = client.post("/analyses", json={"dataset_id": "z" * 200_000})  # over it
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert "TASKGAUGE_MAX_JSON_BODY_KB" in r.json()["detail"] and len(r.content) < 2_000

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"dataset_id": "'
        for _ in range(100):
            yield b"w" * 1000
        yield b'"}'

    r = client.post("/analyses", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM


# ----------------------------------------------------------------------------- dedup and summaries


def test_same_data_under_two_names_is_stored_once_and_lists_are_summaries(stack, client):
    b = io.BytesIO()
    np.savez(b, X=np.random.default_rng(11).normal(size=(80, 6)), y=np.arange(80) % 3)
    first = _post(client, "first-name.npz", b.getvalue()).json()
    second = _post(client, "other-name.npz", b.getvalue()).json()
    assert first["id"] != second["id"] and first["filename"] != second["filename"]
    assert first["blob_sha256"] == second["blob_sha256"]
    assert [p.name for p in FileBlobStore(stack.data_dir / "blobs").files()].count(first["blob_sha256"]) == 1
    assert client.get(f"/datasets/{second['id']}").json()["meta"]["filename"] == "other-name.npz"
    assert first["classes"] == ["0", "1", "2"]
    items = client.get("/datasets", params={"limit": 500}).json()["items"]
    assert items and all("classes" not in d and "meta" not in d for d in items)
    assert {first["id"], second["id"]} <= {d["id"] for d in items}
    for d in (first, second):
        assert client.delete(f"/datasets/{d['id']}").status_code == 204


def test_control_characters_in_names_and_huge_offsets(stack, client):
    b = io.BytesIO()
    np.savez(b, X=np.random.default_rng(12).normal(size=(10, 2)))
    r = _post(client, "nul\x00name.npz", b.getvalue(), name="a\x00b")  # PostgreSQL cannot store NUL: refused
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM and "NUL" in r.json()["detail"]
    r = _post(client, "tab\tname.npz", b.getvalue(), name="a\x07b")  # other control characters are replaced
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "a\ufffdb" and "\t" not in r.json()["filename"]
    assert client.delete(f"/datasets/{r.json()['id']}").status_code == 204
    r = client.get("/datasets", params={"offset": "99999999999999999999"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM


# ------------------------------------------------------------------------------------ crash sweep


def test_temp_files_of_a_killed_upload_are_swept_at_the_next_start(stack, client):
    uploads = stack.data_dir / "tmp" / "uploads"

    def slow_body():
        yield (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow.npy"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        yield b"\0" * MB
        time.sleep(30)  # the API is killed meanwhile
        yield b"\r\n--b--\r\n"

    def send():
        try:
            httpx.post(
                stack.api_url + "/api/v1/datasets",
                content=slow_body(),
                timeout=60,
                headers={"Authorization": f"Bearer {stack.key}", "Content-Type": "multipart/form-data; boundary=b"},
            )
        except httpx.HTTPError:
            pass

    threading.Thread(target=send, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(uploads.glob("upload-*")):
        time.sleep(0.1)
    partial = list(uploads.glob("upload-*"))
    assert partial, "the upload never reached the API"
    service_stack.kill_group(stack.api, signal.SIGKILL)
    store = FileBlobStore(stack.data_dir / "blobs").ensure()
    crashed_part = store.tmp / "deadbeef-crashed.part"  # what a SIGKILL between ingest and publish leaves
    crashed_part.write_bytes(b"\0" * MB)
    held = store.tmp / "held-by-a-live-writer.part"
    held.write_bytes(b"\0")
    old = time.time() - 3600
    for p in [*partial, crashed_part, held]:
        os.utime(p, (old, old))
    lock = TempLock(held)
    try:
        stack.start_api()
        assert list(uploads.glob("upload-*")) == []
        assert not crashed_part.exists()
        assert held.exists()  # a live process's temp file is never swept
    finally:
        lock.release()
        held.unlink(missing_ok=True)
    r = httpx.get(stack.api_url + "/api/v1/datasets", headers={"Authorization": f"Bearer {stack.key}"})
    assert r.status_code == 200
