"""Issue 15, uploads and stored data: the ingest memory model (sizes from what is really materialised, refusals
before allocating), caps on classes/columns/names, float64 kept exactly, the canonical file streamed and
content-addressed without the file name, one-row thumbnails, the memory-limited ingest subprocess, the temp-file
sweep and the ingest slots.

Memory is measured with ``tracemalloc`` (NumPy reports its buffers to it) in-process, and with the child's own
``getrusage`` peak for the subprocess; the API process's RSS is measured in tests/integration/test_upload_limits.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import time
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import skdim
import torch
from reference_data import data as reference
from reference_data import rel

from taskgauge.blobs import FileBlobStore, TempLock, sweep_stale
from taskgauge.datasets.canonical import CanonicalDataset, read_sample, write_canonical
from taskgauge.datasets.ingest import IngestError, IngestOptions, ingest_file
from taskgauge.datasets.ingest.arrays import ByteBudget
from taskgauge.datasets.ingest.errors import Ctx
from taskgauge.datasets.ingest.images import read_limited
from taskgauge.datasets.ingest.isolated import ingest_isolated

MB = 1024 * 1024


def ingest(path: Path, **opts):
    return ingest_file(path, path.name, IngestOptions(**opts))


def refused(path: Path, status: int, **opts) -> IngestError:
    with pytest.raises(IngestError) as info:
        ingest(path, **opts)
    assert info.value.status == status, (info.value.status, str(info.value))
    assert path.name in info.value.detail
    return info.value


def npy_header_only(path: Path, descr: str, shape: tuple) -> Path:
    """A ``.npy`` that is nothing but a header declaring ``descr`` × ``shape`` (the tiny-file bombs)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    path.write_bytes(buf.getvalue())
    return path


class Peak:
    """Peak bytes traced by tracemalloc inside the block (NumPy's buffers included)."""

    def __enter__(self) -> Peak:
        tracemalloc.start()
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc) -> None:
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# ------------------------------------------------------------------------------------- float64 is kept


def _mle(X: np.ndarray) -> float:
    from estimators import registry

    est = registry.get("mle")
    return est.fn(
        torch.from_numpy(X), None, est.parse_params({}), device=torch.device("cpu"), progress=lambda f, s: None
    ).value


@pytest.mark.parametrize("fmt", ["npz", "npy", "csv", "parquet"])
def test_float64_upload_stays_float64_bit_for_bit_and_mle_equals_skdim(tmp_path, fmt):
    X = reference("M7_Roll")  # float64, 2000 × 3, no duplicates
    assert X.dtype == np.float64
    p = tmp_path / f"roll.{fmt}"
    if fmt == "npz":
        np.savez(p, X=X)
    elif fmt == "npy":
        np.save(p, X)
    elif fmt == "csv":
        np.savetxt(p, X, delimiter=",", fmt="%.17g", header="a,b,c", comments="")
    else:
        pd.DataFrame(X, columns=["a", "b", "c"]).to_parquet(p)
    out = tmp_path / "canonical.npz"
    summary = ingest_isolated(p, p.name, IngestOptions(), out, memory_bytes=512 * MB)
    assert summary.dtype == "float64"
    stored = CanonicalDataset.load(out)
    assert stored.X.dtype == np.float64
    assert stored.X.tobytes() == np.ascontiguousarray(X).tobytes()  # bit-identical
    ref = skdim.id.MLE().fit(X).dimension_
    assert rel(_mle(stored.X), ref) <= 1e-9


def test_float32_integer_and_image_inputs_stay_float32(tmp_path):
    np.save(tmp_path / "f32.npy", np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32))
    np.save(tmp_path / "i64.npy", np.arange(30).reshape(10, 3))
    (tmp_path / "ints.csv").write_text("a,b\n" + "\n".join(f"{i},{2 * i}" for i in range(10)) + "\n")
    for name in ("f32.npy", "i64.npy", "ints.csv"):
        assert ingest(tmp_path / name).X.dtype == np.float32, name


def test_report_dataset_section_states_the_dtype(tmp_path):
    from taskgauge.pipeline import DatasetInfo, dataset_summary

    ds = CanonicalDataset(X=np.random.default_rng(0).normal(size=(20, 3)))
    assert dataset_summary(ds, DatasetInfo(name="x"))["dtype"] == "float64"
    ds32 = CanonicalDataset(X=ds.X.astype(np.float32))
    assert dataset_summary(ds32, DatasetInfo(name="x"))["dtype"] == "float32"


# ----------------------------------------------------------------------------- sizes as materialised


@pytest.mark.parametrize("descr", ["<U0", "|S0", "|V0"])
def test_zero_itemsize_dtype_bomb_is_refused_from_its_header(tmp_path, descr):
    # the 128-byte <U0 file declaring (2.5e6, 10, 10, 3)
    p = npy_header_only(tmp_path / "u0.npy", descr, (2_500_000, 10, 10, 3))
    assert p.stat().st_size == 128
    with Peak() as peak:
        err = refused(p, 422)
    assert peak.bytes < 1 * MB
    assert err.title in ("Non-numeric data", "Zero-size dtype")


def test_zero_itemsize_labels_are_refused(tmp_path):
    p = tmp_path / "lab.npz"
    with zipfile.ZipFile(p, "w") as zf:
        buf = io.BytesIO()
        np.save(buf, np.ones((5, 2), np.float32))
        zf.writestr("X.npy", buf.getvalue())
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(hdr, {"descr": "<U0", "fortran_order": False, "shape": (10**9,)})
        zf.writestr("y.npy", hdr.getvalue())
    assert refused(p, 422).title == "Zero-size dtype"


@pytest.mark.parametrize(
    "shape, status", [((-1, 4), 422), ((5, -3), 422), ((2**62, 2**62), 413), ((2**40, 2**40, 2**40), 413)]
)
def test_negative_or_overflowing_dims_are_client_errors(tmp_path, shape, status):
    p = npy_header_only(tmp_path / "dims.npy", "<f4", shape)
    err = refused(p, status)
    if status == 413:
        assert "expands to" in err.detail


def test_features_are_charged_with_their_canonical_copy(tmp_path):
    # 1.5 MB of int8 becomes 6 MB of float32: over a 5 MB limit although the raw bytes are not
    p = tmp_path / "i8.npy"
    np.save(p, np.zeros((1536, 1024), np.int8))
    err = refused(p, 413, max_expanded_mb=5)
    assert "limit of 5 MB" in err.detail
    assert ingest(p, max_expanded_mb=8).X.dtype == np.float32


def test_channels_last_images_make_one_copy(tmp_path):
    X = np.random.default_rng(1).integers(0, 255, (200, 64, 64, 3), dtype=np.uint8)  # 2.4 MB
    p = tmp_path / "hwc.npy"
    np.save(p, X)
    with Peak() as peak:
        ds = ingest(p)
    assert ds.X.shape == (200, 3, 64, 64) and ds.X.flags.c_contiguous
    np.testing.assert_array_equal(ds.X, X.transpose(0, 3, 1, 2).astype(np.float32))
    # raw uint8 (1×) + the float32 canonical array (4×): nothing else of the data's size
    assert peak.bytes <= 5 * X.nbytes + 1 * MB, peak.bytes / X.nbytes


def test_parquet_list_column_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # the bomb was 3 rows × 1e8 doubles in 1.2 KB; 3 × 1e6 has the same shape and is quick to write
    values = pa.array(np.zeros(1_000_000))
    col = pa.ListArray.from_arrays(
        pa.array([0, 1_000_000, 2_000_000, 3_000_000], pa.int32()), pa.concat_arrays([values, values, values])
    )
    p = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"x": col, "label": ["a", "b", "c"]}), p)
    assert p.stat().st_size < 50_000
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("the table was read"))
    err = refused(p, 422)
    assert err.title == "Nested columns" and "'x'" in err.detail


def test_parquet_size_counts_values_from_the_metadata(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    p = tmp_path / "tall.parquet"
    pd.DataFrame({"a": np.zeros(400_000), "b": np.zeros(400_000)}).to_parquet(p)  # 6.4 MB of values
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("the table was read"))
    err = refused(p, 413, max_expanded_mb=5)
    assert "400,000 rows × 2 columns" in err.detail


def test_zip_entry_larger_than_any_allowed_image_is_refused_from_the_directory(tmp_path, monkeypatch):
    # the 1.9 MB zip with a 1.81 GiB 'a.png': refused from the central directory, nothing inflated
    p = tmp_path / "big-entry.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cls/a.png", bytes(3 * MB))
        zf.writestr("cls/b.png", bytes(10))
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("an entry was decompressed"))
    err = refused(p, 413, max_image_pixels=100_000)  # no image within 100k pixels needs 3 MB
    assert err.title == "Image file too large" and "cls/a.png" in err.detail


def test_read_limited_fills_one_buffer():
    ctx = Ctx(filename="s.zip", options=IngestOptions(max_expanded_mb=64))
    payload = bytes(range(256)) * (80 * 1024)  # 20 MB
    with Peak() as peak:
        got = read_limited(io.BytesIO(payload), ByteBudget(ctx), "the zip", size=len(payload))
    assert got == payload
    assert peak.bytes <= len(payload) + 2 * MB  # the buffer itself (+ one chunk), not chunks plus a joined copy
    with pytest.raises(EOFError):  # a stream longer than declared
        read_limited(io.BytesIO(payload + b"x"), ByteBudget(ctx), "the zip", size=len(payload))


def test_zip_images_are_decoded_into_one_float32_array(tmp_path):
    from PIL import Image

    p = tmp_path / "imgs.zip"
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 255, (300, 48, 48, 3), dtype=np.uint8)
    with zipfile.ZipFile(p, "w") as zf:
        for i, a in enumerate(imgs):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, "BMP")  # uncompressed: entries as large as the pixels
            zf.writestr(f"c{i % 2}/{i:03d}.bmp", buf.getvalue())
    with Peak() as peak:
        ds = ingest(p)
    X_bytes = ds.X.nbytes
    assert ds.X.dtype == np.float32 and ds.X.shape == (300, 3, 48, 48)
    # float32 X (4 bytes/value) + the compact uint8 pixels (1) + one entry at a time
    assert peak.bytes <= 1.25 * X_bytes + 2 * MB, peak.bytes / X_bytes


# -------------------------------------------------------------------------------------------- caps


def _header_only_npz(path: Path, members: dict[str, np.ndarray | tuple[str, tuple]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in members.items():
            buf = io.BytesIO()
            if isinstance(value, tuple):
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": value[0], "fortran_order": False, "shape": value[1]}
                )
            else:
                np.save(buf, value)
            zf.writestr(name + ".npy", buf.getvalue())
    return path


def test_npz_classes_array_declaring_5e7_names_is_refused_from_its_header(tmp_path):
    p = _header_only_npz(
        tmp_path / "classes.npz",
        {"X": np.zeros((6, 2), np.float32), "y": np.arange(6) % 2, "classes": ("<U1", (50_000_000,))},
    )
    assert p.stat().st_size < 6000
    with Peak() as peak:
        err = refused(p, 413)
    assert peak.bytes < 1 * MB
    assert err.title == "Too many classes" and "50,000,000" in err.detail


def test_too_many_distinct_labels(tmp_path):
    p = tmp_path / "many.npz"
    np.savez(p, X=np.zeros((50, 2)), y=np.arange(50))
    err = refused(p, 413, max_classes=20)
    assert "50 classes" in err.detail and "20" in err.detail
    assert ingest(p, max_classes=50).n_classes == 50


def test_csv_with_a_million_columns_is_refused_from_its_first_row(tmp_path, monkeypatch):
    p = tmp_path / "wide.csv"
    row = ",".join(["0"] * 1_000_000)
    p.write_text("\n".join([row] * 3) + "\n")  # 6 MB, as in the issue
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("pandas read the table"))
    err = refused(p, 413)
    assert err.title == "Too many columns" and "1,000,000 columns" in err.detail


def test_csv_rows_times_columns_over_the_limit_is_refused_before_pandas(tmp_path, monkeypatch):
    p = tmp_path / "tall.csv"
    p.write_text("a,b\n" + "0,1\n" * 400_000)  # 6.4 MB as float64
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("pandas read the table"))
    assert "400,000 rows × 2 columns" in refused(p, 413, max_expanded_mb=5).detail


def test_long_class_names_are_refused(tmp_path):
    p = tmp_path / "names.csv"
    p.write_text("a,label\n1," + "x" * 5000 + "\n2,b\n3,c\n")
    err = refused(p, 413)
    assert err.title == "Name too long"


# ------------------------------------------------------------------------------ the canonical file


def test_canonical_bytes_do_not_depend_on_the_file_name(tmp_path):
    X = np.random.default_rng(5).normal(size=(30, 4)).astype(np.float32)
    a, b = tmp_path / "first.npz", tmp_path / "second-name.npz"
    np.savez(a, X=X, y=np.arange(30) % 3)
    np.savez(b, X=X, y=np.arange(30) % 3)
    da, db_ = ingest(a), ingest(b)
    assert da.meta["filename"] != db_.meta["filename"]
    assert da.to_bytes() == db_.to_bytes()
    assert "filename" not in CanonicalDataset.from_bytes(da.to_bytes()).meta


def test_canonical_file_equals_savez_plus_fixed_timestamps():
    import json

    from taskgauge.blobs import deterministic_npz

    X = np.random.default_rng(6).normal(size=(25, 3, 4, 4)).astype(np.float32)
    ds = CanonicalDataset(X=X, y=np.arange(25) % 2, classes=["a", "b"], meta={"k": [1, 2]})
    buf = io.BytesIO()
    np.savez(
        buf,
        X=X,
        y=ds.y.astype(np.int64),
        classes=np.array(["a", "b"]),
        meta=np.array(json.dumps({"k": [1, 2]}, sort_keys=True)),
    )
    assert ds.to_bytes() == deterministic_npz(buf.getvalue())


def test_writing_the_canonical_file_makes_no_copy_of_the_data(tmp_path):
    X = np.random.default_rng(7).normal(size=(4096, 2048)).astype(np.float32)  # 32 MB
    ds = CanonicalDataset(X=X, y=np.arange(4096) % 5, classes=list("abcde"))
    with Peak() as peak:
        size = write_canonical(tmp_path / "c.npz", ds)
    assert size == (tmp_path / "c.npz").stat().st_size > X.nbytes
    assert peak.bytes < 2 * MB  # no to_bytes(), no rewrite buffers
    back = CanonicalDataset.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.X, X)


def test_read_sample_reads_one_row(tmp_path):
    X = np.random.default_rng(8).random((2000, 3, 32, 32), dtype=np.float32)  # 24 MB
    path = tmp_path / "imgs.npz"
    write_canonical(path, CanonicalDataset(X=X))
    with Peak() as peak:
        row, shape = read_sample(path, 1234)
    np.testing.assert_array_equal(row, X[1234])
    assert shape == X.shape
    assert peak.bytes < 200_000  # one row is 12 KB
    with pytest.raises(IndexError):
        read_sample(path, 2000)


def test_read_sample_of_a_compressed_member(tmp_path):
    X = np.random.default_rng(9).random((50, 1, 8, 8)).astype(np.float32)
    path = tmp_path / "old.npz"
    np.savez_compressed(path, X=X)
    row, _ = read_sample(path, 49)
    np.testing.assert_array_equal(row, X[49])


# -------------------------------------------------------------------------------- the ingest child


def test_ingest_child_over_its_memory_limit_gets_413(tmp_path):
    p = tmp_path / "zeros.npz"
    np.savez_compressed(p, X=np.zeros((2048, 32768), np.float32))  # 256 MB materialised, ~250 KB on disk
    out = tmp_path / "out.npz"
    with pytest.raises(IngestError) as info:
        ingest_isolated(p, p.name, IngestOptions(), out, memory_bytes=64 * MB)
    assert info.value.status == 413 and "zeros.npz" in info.value.detail
    # the same file within a limit that fits: the child's own peak stays under it (imports + the data)
    summary = ingest_isolated(p, p.name, IngestOptions(), out, memory_bytes=400 * MB)
    assert summary.shape == [2048, 32768]
    assert summary.child_peak_rss < 400 * MB + 200 * MB


def test_ingest_child_runs_below_the_api_priority(tmp_path):
    """TASKGAUGE_INGEST_NICE: the child lowers its priority before its imports, so the API answers first."""
    import os

    p = tmp_path / "small.npy"
    np.save(p, np.ones((4, 3), np.float32))
    here = os.nice(0)
    niced = ingest_isolated(p, p.name, IngestOptions(), tmp_path / "o.npz", memory_bytes=256 * MB, nice=7)
    assert niced.child_nice == min(19, here + 7)
    same = ingest_isolated(p, p.name, IngestOptions(), tmp_path / "o.npz", memory_bytes=256 * MB, nice=0)
    assert same.child_nice == here and same.shape == niced.shape == [4, 3]


def test_ingest_child_errors_come_back_as_ingest_errors(tmp_path):
    p = npy_header_only(tmp_path / "neg.npy", "<f4", (-5, 3))
    with pytest.raises(IngestError) as info:
        ingest_isolated(p, p.name, IngestOptions(), tmp_path / "o.npz", memory_bytes=256 * MB)
    assert info.value.status == 422 and "negative" in info.value.detail


# ------------------------------------------------------------------------------- temp files, slots


def _age(path: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_sweep_removes_only_temp_files_of_dead_writers(tmp_path):
    dead, young, held = tmp_path / "upload-dead", tmp_path / "upload-young", tmp_path / "upload-held"
    for p in (dead, young, held):
        p.write_bytes(b"x" * 100)
    _age(dead)
    _age(held)
    lock = TempLock(held)  # a live writer
    try:
        assert sweep_stale(tmp_path, "upload-*") == 1
        assert not dead.exists() and young.exists() and held.exists()
    finally:
        lock.release()
    assert sweep_stale(tmp_path, "upload-*") == 1 and not held.exists()


def test_blob_store_sweeps_stale_parts_on_startup(tmp_path):
    store = FileBlobStore(tmp_path / "blobs").ensure()
    part = store.new_part()  # a live one (this process holds its lock)
    stale = store.tmp / "0123abcd-crashed.part"
    stale.write_bytes(b"\0" * 1000)
    _age(stale)
    _age(part.path)
    FileBlobStore(tmp_path / "blobs").ensure()  # what a restarted process does
    assert not stale.exists() and part.path.exists()
    staged = store.stage_file(part)
    store.discard(staged)
    assert store.temp_files() == []


def test_ingest_slots_answer_503_with_retry_after_when_busy():
    from starlette.exceptions import HTTPException

    from app.uploads import ingest_slot

    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace()))

    async def scenario():
        async with ingest_slot(request, 1, 5):
            with pytest.raises(HTTPException) as info:
                async with ingest_slot(request, 1, 0.05):
                    pytest.fail("a second ingest ran")
            exc = info.value
            assert exc.status_code == 503 and exc.headers["Retry-After"]
            assert "TASKGAUGE_MAX_CONCURRENT_INGESTS" in exc.detail
        async with ingest_slot(request, 1, 0.05):  # released: the next one runs
            pass

    # in a thread of its own: Playwright's sync API (the browser tests, same session) keeps an event loop running
    # in the main thread, where asyncio.run would refuse to start
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, scenario()).result()


def test_nul_in_class_names_is_refused(tmp_path):
    # PostgreSQL cannot store NUL in text or JSON: refused at ingest, the same on both backends
    p = tmp_path / "nul.npz"
    np.savez(p, X=np.zeros((4, 2)), y=np.array(["a\x00b", "c", "a\x00b", "c"]))
    assert refused(p, 422).title == "NUL in a name"


def test_image_folders_count_against_the_class_cap(tmp_path):
    from PIL import Image

    p = tmp_path / "folders.zip"
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    with zipfile.ZipFile(p, "w") as zf:
        for i in range(30):
            zf.writestr(f"class{i:02d}/a.png", buf.getvalue())
    assert "30 classes" in refused(p, 413, max_classes=10).detail
    assert ingest(p, max_classes=30).n_classes == 30
