"""taskgauge.datasets.ingest: every supported format's happy path and every bad input of README.md (message and status)."""

from __future__ import annotations

import builtins
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.datasets.ingest import SUPPORTED_EXTENSIONS, IngestError, IngestOptions, ingest_file
from taskgauge.datasets.ingest.arrays import ByteBudget
from taskgauge.datasets.ingest.errors import Ctx
from taskgauge.datasets.ingest.images import read_limited


def ingest(path: Path, **opts) -> CanonicalDataset:
    return ingest_file(path, path.name, IngestOptions(**opts) if opts else None)


def rejected(path: Path, status: int = 422, **opts) -> IngestError:
    with pytest.raises(IngestError) as info:
        ingest(path, **opts)
    err = info.value
    assert err.status == status, (err.status, str(err))
    assert path.name in err.detail  # every message names the file
    return err


# ----------------------------------------------------------------------------------------------- .npz


def test_npz_happy_path_keeps_values_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 5))
    y = rng.integers(0, 3, size=20)
    p = tmp_path / "data.npz"
    np.savez(p, X=X, y=y)
    ds = ingest(p)
    assert ds.X.dtype == np.float64 and ds.X.shape == (20, 5)  # float64 input stays float64, bit for bit
    np.testing.assert_array_equal(ds.X, X)
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.y, y)
    assert ds.classes == ["0", "1", "2"]
    assert ds.meta["source_format"] == "npz"
    assert ds.meta["filename"] == "data.npz"
    assert ds.meta["label_column"] == "y"
    assert ds.meta["preprocessing"] == {}


def test_npz_single_array_is_x_and_compressed_works(tmp_path):
    p = tmp_path / "only.npz"
    np.savez_compressed(p, features=np.arange(12, dtype=np.float32).reshape(4, 3))
    ds = ingest(p)
    assert ds.y is None and ds.classes is None
    np.testing.assert_array_equal(ds.X, np.arange(12).reshape(4, 3))
    assert ds.meta["arrays"] == {"X": "features", "y": None}


def test_npz_string_labels_and_float_integral_labels(tmp_path):
    X = np.eye(4)
    p = tmp_path / "s.npz"
    np.savez(p, X=X, y=np.array(["dog", "cat", "dog", "bird"]))
    ds = ingest(p)
    assert ds.classes == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(ds.y, [2, 1, 2, 0])
    p2 = tmp_path / "f.npz"
    np.savez(p2, X=X, y=np.array([3.0, 7.0, 3.0, 7.0]))
    ds2 = ingest(p2)
    assert ds2.classes == ["3", "7"]
    np.testing.assert_array_equal(ds2.y, [0, 1, 0, 1])


def test_npz_single_class_is_fine(tmp_path):
    p = tmp_path / "one.npz"
    np.savez(p, X=np.random.default_rng(1).normal(size=(5, 2)), y=np.zeros(5, dtype=int))
    ds = ingest(p)
    assert ds.classes == ["0"] and ds.y.tolist() == [0] * 5


def test_npz_label_column_selects_array_and_canonical_roundtrip(tmp_path):
    p = tmp_path / "lab.npz"
    np.savez(p, X=np.random.default_rng(2).normal(size=(6, 3)), target=np.array([1, 0, 1, 0, 1, 1]))
    ds = ingest(p, label_column="target")
    assert ds.y.tolist() == [1, 0, 1, 0, 1, 1]
    # a canonical file re-uploaded keeps its class names
    back = CanonicalDataset.from_bytes(CanonicalDataset(X=ds.X, y=ds.y, classes=["no", "yes"], meta={}).to_bytes())
    q = tmp_path / "canon.npz"
    q.write_bytes(CanonicalDataset(X=back.X, y=back.y, classes=back.classes, meta={"a": 1}).to_bytes())
    ds2 = ingest(q)
    assert ds2.classes == ["no", "yes"]
    np.testing.assert_array_equal(ds2.y, ds.y)


def test_npz_images_channels_last_moved_first(tmp_path):
    X = np.random.default_rng(3).random((4, 5, 6, 3)).astype(np.float32)
    p = tmp_path / "img.npz"
    np.savez(p, X=X)
    ds = ingest(p)
    assert ds.X.shape == (4, 3, 5, 6)
    np.testing.assert_array_equal(ds.X, X.transpose(0, 3, 1, 2))
    assert ds.meta["preprocessing"]["channels_last_to_first"] is True


class _Evil:
    """Unpickling this object would create a file: proof that nothing is ever unpickled."""

    marker = ""

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_npz_pickled_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    p = tmp_path / "evil.npz"
    np.savez(p, X=np.array([evil, evil, evil], dtype=object))
    err = rejected(p)
    assert err.title == "Pickled object array"
    assert "save numeric arrays" in err.detail
    assert not marker.exists()


def test_npy_pickled_object_array_is_refused(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([[1, "a"], [2, "b"], [3, "c"]], dtype=object), allow_pickle=True)
    err = rejected(p)
    assert "pickled" in err.detail and "never loads" in err.detail


@pytest.mark.parametrize("cut", ["half", "member"])
def test_npz_truncated_or_corrupt(tmp_path, cut):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, X=np.random.default_rng(4).normal(size=(200, 10)))
    data = bytearray(good.read_bytes())
    p = tmp_path / "bad.npz"
    if cut == "half":
        p.write_bytes(bytes(data[: len(data) // 2]))
    else:  # flip bytes inside the compressed member: CRC or zlib failure while reading
        for i in range(200, 260):
            data[i] ^= 0xFF
        p.write_bytes(bytes(data))
    err = rejected(p)
    assert err.title == "Corrupt file"
    assert "corrupt" in err.detail


def test_npz_not_a_zip(tmp_path):
    p = tmp_path / "text.npz"
    p.write_text("hello, I am not numpy")
    err = rejected(p)
    assert "not a .npz (zip) archive" in err.detail


def test_npz_ambiguous_arrays_and_missing_label_array(tmp_path):
    p = tmp_path / "two.npz"
    np.savez(p, a=np.ones((3, 2)), b=np.ones((3, 2)))
    err = rejected(p)
    assert "name the features 'X'" in err.detail and "a, b" in err.detail
    q = tmp_path / "lab.npz"
    np.savez(q, X=np.ones((3, 2)), y=np.arange(3))
    err = rejected(q, label_column="labels")
    assert "'labels'" in err.detail and "X, y" in err.detail


def test_npz_nan_inf_counted_with_first_row(tmp_path):
    X = np.zeros((10, 3))
    X[4, 1] = np.nan
    X[7, 0] = np.inf
    X[7, 2] = np.nan
    p = tmp_path / "nan.npz"
    np.savez(p, X=X)
    err = rejected(p)
    assert err.title == "Missing or infinite values"
    assert "3 NaN and Inf values in 2 rows, first at row 4" in err.detail


def test_float64_beyond_float32_range_is_kept(tmp_path):
    X = np.ones((4, 2))
    X[2, 1] = 1e300
    p = tmp_path / "big.npz"
    np.savez(p, X=X)
    ds = ingest(p)
    assert ds.X.dtype == np.float64 and ds.X[2, 1] == 1e300


@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max, reason="no extended precision")
def test_longdouble_beyond_float64_range_is_refused(tmp_path):
    X = np.ones((4, 2), dtype=np.longdouble)
    X[2, 1] = np.longdouble(np.finfo(np.float64).max) * 16
    p = tmp_path / "big.npy"
    np.save(p, X)
    err = rejected(p)
    assert "float64" in err.detail and "row 2" in err.detail


@pytest.mark.parametrize(
    ("X", "needle"),
    [
        (np.zeros((0, 4)), "no samples"),
        (np.zeros((5, 0)), "no features"),
        (np.ones((2, 4)), "2 samples"),
        (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), "strings"),
        (np.ones(10), "reshape(-1, 1)"),
    ],
    ids=["no-rows", "no-columns", "two-samples", "strings", "1-d"],
)
def test_npz_bad_shapes_and_dtypes(tmp_path, X, needle):
    p = tmp_path / "x.npz"
    np.savez(p, X=X)
    assert needle in rejected(p).detail


def test_npz_label_problems(tmp_path):
    X = np.random.default_rng(5).normal(size=(4, 2))
    p = tmp_path / "y.npz"
    np.savez(p, X=X, y=np.array([0.0, 1.5, 1.0, 0.0]))
    assert "1.5 at row 1 is not a whole number" in rejected(p).detail
    np.savez(p, X=X, y=np.array([0.0, np.nan, 1.0, np.nan]))
    assert "2 missing labels, first at row 1" in rejected(p).detail
    np.savez(p, X=X, y=np.array([0, 1, 1]))
    assert "3 labels but X has 4 samples" in rejected(p).detail


def test_npz_declared_size_over_limit_is_413(tmp_path):
    p = tmp_path / "large.npz"
    np.savez_compressed(p, X=np.zeros((3 * 1024 * 1024 // 8 + 10, 1)))  # > 3 MB of zeros, tiny compressed
    assert p.stat().st_size < 100_000
    err = rejected(p, status=413, max_expanded_mb=2)
    assert "more than the limit of 2 MB" in err.detail


# ----------------------------------------------------------------------------------------------- .npy


def test_npy_happy_path_and_grey_image_stack(tmp_path):
    p = tmp_path / "a.npy"
    X = np.arange(24, dtype=np.uint8).reshape(4, 6)
    np.save(p, X)
    ds = ingest(p)
    assert ds.y is None and ds.X.dtype == np.float32
    np.testing.assert_array_equal(ds.X, X)  # values as given
    q = tmp_path / "imgs.npy"
    np.save(q, np.asfortranarray(np.arange(60, dtype=np.float64).reshape(3, 4, 5)))
    ds = ingest(q)
    assert ds.X.shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(ds.X[:, 0], np.arange(60).reshape(3, 4, 5))
    assert ds.meta["preprocessing"]["added_channel_axis"] is True


def test_npy_truncated_and_label_column(tmp_path):
    p = tmp_path / "t.npy"
    np.save(p, np.ones((100, 10)))
    p.write_bytes(p.read_bytes()[:-100])
    assert rejected(p).title == "Corrupt file"
    q = tmp_path / "ok.npy"
    np.save(q, np.ones((5, 2)))
    assert "np.savez" in rejected(q, label_column="y").detail


def test_npy_header_declaring_huge_array_is_413_before_allocating(tmp_path):
    p = tmp_path / "liar.npy"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 1000)})
    p.write_bytes(buf.getvalue() + b"\0" * 64)
    err = rejected(p, status=413)
    assert "expands to" in err.detail


# ------------------------------------------------------------------------------------------ .csv/.parquet


def _iris_like(n=9):
    rng = np.random.default_rng(6)
    return pd.DataFrame(
        {
            "sepal": rng.normal(size=n),
            "petal": rng.normal(size=n),
            "flag": rng.integers(0, 2, size=n).astype(bool),
            "species": np.array(["setosa", "virginica", "versicolor"])[np.arange(n) % 3],
        }
    )


def test_csv_happy_path_default_label_names(tmp_path):
    df = _iris_like().rename(columns={"species": "Label"})
    p = tmp_path / "t.csv"
    df.to_csv(p, index=False)
    ds = ingest(p)
    assert ds.meta["label_column"] == "Label"
    assert ds.meta["feature_columns"] == ["sepal", "petal", "flag"]
    assert ds.classes == ["setosa", "versicolor", "virginica"]
    np.testing.assert_array_equal(ds.y, [0, 2, 1] * 3)
    np.testing.assert_allclose(ds.X[:, 0], df["sepal"].to_numpy(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(ds.X[:, 2], df["flag"].astype(float))


def test_csv_explicit_label_column_semicolons_and_float_labels(tmp_path):
    p = tmp_path / "semi.csv"
    p.write_text("a;b;cls\n1;2;1.0\n3;4;0.0\n5;6;1.0\n\n7;8;2.0\n")
    ds = ingest(p, label_column="cls")
    assert ds.X.shape == (4, 2) and ds.meta["delimiter"] == ";"
    assert ds.classes == ["0", "1", "2"] and ds.y.tolist() == [1, 0, 1, 2]


def test_csv_without_header(tmp_path):
    p = tmp_path / "nohead.csv"
    p.write_text("1,2,3\n4,5,6\n7,8,9\n")
    ds = ingest(p)
    assert ds.meta["header"] is False and ds.y is None
    np.testing.assert_array_equal(ds.X, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    ds = ingest(p, label_column="2")
    assert ds.X.shape == (3, 2) and ds.classes == ["3", "6", "9"]


def test_csv_non_numeric_columns_are_named(tmp_path):
    df = _iris_like()
    df["city"] = "x"
    p = tmp_path / "nn.csv"
    df.to_csv(p, index=False)
    err = rejected(p)
    assert err.title == "Non-numeric columns"
    assert "'species' (e.g. 'setosa' at row 0)" in err.detail and "'city'" in err.detail
    assert "2 feature columns are not numeric" in err.detail
    p.write_text("a,b\n1,2\n3,?\n5,6\n")
    err = rejected(p)
    assert "'b' (e.g. '?' at row 1)" in err.detail and "label_column='b'" in err.detail


def test_csv_nan_counted_with_first_row_and_column(tmp_path):
    p = tmp_path / "nan.csv"
    p.write_text("a,b,label\n1,2,0\n3,,1\n5,6,0\n7,,1\n")
    err = rejected(p)
    assert "2 NaN values in 2 rows, first at row 1, column 'b'" in err.detail
    p.write_text("a,b,label\n1,2,0\n3,inf,1\n5,6,0\n")
    assert "1 Inf value" in rejected(p).detail


@pytest.mark.parametrize(
    ("text", "line", "fields"),
    [("a,b,c\n1,2,3\n4,5,6,7\n8,9,10\n", 3, 4), ("a,b,c\n1,2,3\n4,5,6\n8,9\n", 4, 2)],
    ids=["too-many", "too-few"],
)
def test_csv_ragged_rows_give_line_number(tmp_path, text, line, fields):
    p = tmp_path / "rag.csv"
    p.write_text(text)
    err = rejected(p)
    assert err.title == "Ragged rows"
    assert f"line {line} has {fields} fields but line 1 has 3" in err.detail


@pytest.mark.parametrize(
    ("text", "needle"),
    [("", "empty"), ("\n\n", "empty"), ("a,b,label\n", "0 rows"), ("a,b\n1,2\n3,4\n", "2 samples")],
    ids=["empty", "blank", "header-only", "two-rows"],
)
def test_csv_empty_and_too_small(tmp_path, text, needle):
    p = tmp_path / "e.csv"
    p.write_text(text)
    assert needle in rejected(p).detail


def test_csv_missing_label_column_lists_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("a,b,kind\n1,2,0\n3,4,1\n5,6,0\n")
    err = rejected(p, label_column="class")
    assert err.title == "Label column not found"
    assert "'class'" in err.detail and "'a', 'b', 'kind'" in err.detail


def test_csv_missing_labels_and_only_label_column(tmp_path):
    p = tmp_path / "ml.csv"
    p.write_text("a,label\n1,x\n2,\n3,y\n")
    assert "1 missing label, first at row 1" in rejected(p).detail
    p.write_text("label\n1\n2\n3\n")
    assert "No feature columns" == rejected(p).title


def test_csv_not_utf8(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("a,b\n1,\xe9\n".encode("latin-1") + b"\xff\xfe\n")
    assert "UTF-8" in rejected(p).detail


def test_parquet_happy_path_and_errors(tmp_path):
    df = _iris_like(12)
    p = tmp_path / "t.parquet"
    df.to_parquet(p)
    ds = ingest(p, label_column="species")
    assert ds.X.shape == (12, 3) and ds.meta["source_format"] == "parquet"
    assert ds.classes == ["setosa", "versicolor", "virginica"]
    err = rejected(p)  # species is not a default label name, so it is a non-numeric feature
    assert "'species'" in err.detail
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(p.read_bytes()[:200])
    assert rejected(bad).title == "Corrupt file"
    big = tmp_path / "big.parquet"
    pd.DataFrame({"a": np.zeros(300_000)}).to_parquet(big)  # 2.4 MB as float64, tiny compressed
    assert rejected(big, status=413, max_expanded_mb=2).title == "Data too large"


# --------------------------------------------------------------------------------------------- .zip


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, fmt)
    return b.getvalue()


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def test_zip_images_exact_values_order_and_classes(tmp_path):
    rng = np.random.default_rng(7)
    imgs = {
        f"set/{c}/{i}.png": rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
        for c in ("dog", "cat")
        for i in range(2)
    }
    entries = {k: _png(v) for k, v in imgs.items()}
    entries["__MACOSX/set/._x.png"] = b"junk"
    entries["set/readme.txt"] = b"hello"
    p = _zip(tmp_path / "pets.zip", entries)
    ds = ingest(p)
    assert ds.X.shape == (4, 3, 5, 4) and ds.X.dtype == np.float32
    assert ds.classes == ["cat", "dog"] and ds.y.tolist() == [0, 0, 1, 1]
    order = ["set/cat/0.png", "set/cat/1.png", "set/dog/0.png", "set/dog/1.png"]
    for i, name in enumerate(order):
        np.testing.assert_allclose(ds.X[i], imgs[name].transpose(2, 0, 1) / 255.0, atol=1e-7)
    assert ds.meta["ignored_entries"] == 2 and ds.meta["top_folder"] == "set"
    assert ds.meta["source_format"] == "image-zip"
    assert ds.meta["preprocessing"]["channels"] == "rgb"


def test_zip_grayscale_option_matches_itu_luma(tmp_path):
    rng = np.random.default_rng(8)
    arrs = [rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8) for _ in range(3)]
    p = _zip(tmp_path / "g.zip", {f"a/{i}.png": _png(a) for i, a in enumerate(arrs)})
    ds = ingest(p, grayscale=True)
    assert ds.X.shape == (3, 1, 6, 6)
    for i, a in enumerate(arrs):  # ITU-R 601-2: L = 0.299 R + 0.587 G + 0.114 B
        r, g, b = (a[..., k].astype(np.float64) for k in range(3))
        luma = (r * 299 + g * 587 + b * 114) / 1000 / 255
        np.testing.assert_allclose(ds.X[i, 0], luma, atol=1.01 / 255)


def test_zip_grey_and_colour_mixed_and_16bit(tmp_path):
    g = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    c = np.full((4, 4, 3), 200, dtype=np.uint8)
    p = _zip(tmp_path / "m.zip", {"a/g.png": _png(g), "a/h.png": _png(g), "b/c.png": _png(c)})
    ds = ingest(p)
    assert ds.X.shape == (3, 3, 4, 4)
    np.testing.assert_allclose(ds.X[0], np.stack([g, g, g]) / 255.0, atol=1e-7)  # grey replicated
    g16 = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000
    q = _zip(tmp_path / "s.zip", {f"k/{i}.png": _png(g16) for i in range(3)})
    ds = ingest(q)
    assert ds.X.shape == (3, 1, 4, 4)
    np.testing.assert_allclose(ds.X[1, 0], g16 / 65535.0, atol=1e-7)


def test_zip_rgba_alpha_dropped_and_recorded(tmp_path):
    a = np.zeros((3, 3, 4), dtype=np.uint8)
    a[..., 0] = 255
    a[..., 3] = 10
    p = _zip(tmp_path / "a.zip", {f"x/{i}.png": _png(a) for i in range(3)})
    ds = ingest(p)
    assert ds.X.shape == (3, 3, 3, 3)
    np.testing.assert_allclose(ds.X[:, 0], 1.0)
    assert ds.meta["preprocessing"]["dropped_alpha_channel"] == 3


def test_zip_mixed_sizes_need_resize(tmp_path):
    p = _zip(
        tmp_path / "sz.zip",
        {
            "a/big.png": _png(np.zeros((8, 10), np.uint8)),
            "a/x.jpg": _png(np.zeros((6, 6, 3), np.uint8), "JPEG"),
            "b/s.bmp": _png(np.zeros((4, 4), np.uint8), "BMP"),
        },
    )
    err = rejected(p)
    assert err.title == "Images of different sizes"
    assert "'a/big.png' is 10×8" in err.detail and "'a/x.jpg' is 6×6" in err.detail and "resize" in err.detail
    ds = ingest(p, resize="5x7")
    assert ds.X.shape == (3, 3, 5, 7) and ds.meta["preprocessing"]["resize"] == [5, 7]
    ds = ingest(p, resize=(4, 4), grayscale=True)
    assert ds.X.shape == (3, 1, 4, 4)


@pytest.mark.parametrize(
    "name", ["../evil.png", "cat/../../evil.png", "/abs/cat/x.png", "C:/win/x.png", "cat\\..\\..\\x.png"]
)
def test_zip_path_traversal_rejected(tmp_path, name):
    ok = _png(np.zeros((2, 2), np.uint8))
    p = _zip(tmp_path / "trav.zip", {"cat/1.png": ok, "cat/2.png": ok, "dog/1.png": ok, name: ok})
    err = rejected(p)
    assert err.title == "Unsafe zip entry"
    assert name in err.detail


def test_zip_bomb_rejected_from_headers(tmp_path):
    p = tmp_path / "bomb.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", b"\0" * (30 * 1024 * 1024))
    assert p.stat().st_size < 100_000  # ~1000:1
    err = rejected(p, status=413, max_expanded_mb=10)
    assert "expands to 30.0 MB, more than the limit of 10 MB" in err.detail


def _lie_about_size(path: Path, declared: int) -> None:
    """Rewrite every uncompressed-size field (local headers and central directory) to ``declared``."""
    data = bytearray(path.read_bytes())
    i = 0
    while (i := data.find(b"PK\x03\x04", i)) != -1:
        struct.pack_into("<I", data, i + 22, declared)
        i += 4
    i = 0
    while (i := data.find(b"PK\x01\x02", i)) != -1:
        struct.pack_into("<I", data, i + 24, declared)
        i += 4
    path.write_bytes(bytes(data))


def test_zip_bomb_with_lying_headers_is_rejected(tmp_path):
    p = tmp_path / "liar.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", b"\0" * (20 * 1024 * 1024))
    _lie_about_size(p, 1000)
    assert zipfile.ZipFile(p).infolist()[0].file_size == 1000
    err = rejected(p, max_expanded_mb=10)  # headers pass; reading never yields more than was declared
    assert "a/zeros.png" in err.detail


def test_read_limited_stops_a_stream_that_outgrows_the_budget():
    ctx = Ctx(filename="s.zip", options=IngestOptions(max_expanded_mb=1))
    budget = ByteBudget(ctx)
    assert read_limited(io.BytesIO(b"x" * 1000), budget, "the zip") == b"x" * 1000
    with pytest.raises(IngestError) as info:
        read_limited(io.BytesIO(b"\0" * (2 * 1024 * 1024)), budget, "the zip")
    assert info.value.status == 413 and "limit of 1 MB" in info.value.detail


def test_zip_too_many_files(tmp_path):
    ok = _png(np.zeros((2, 2), np.uint8))
    p = _zip(tmp_path / "many.zip", {f"c/{i}.png": ok for i in range(6)})
    err = rejected(p, status=413, max_files=5)
    assert "6 files, more than the limit of 5" in err.detail


def test_zip_undecodable_and_truncated_images_name_the_entry(tmp_path):
    ok = _png(np.full((4, 4), 9, np.uint8))
    p = _zip(tmp_path / "bad.zip", {"a/1.png": ok, "a/2.png": ok, "b/broken.png": b"not an image at all"})
    err = rejected(p)
    assert err.title == "Undecodable image" and "'b/broken.png'" in err.detail
    big = _png(np.random.default_rng(9).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    p = _zip(tmp_path / "trunc.zip", {"a/1.png": big, "a/2.png": big, "b/cut.png": big[: len(big) // 2]})
    err = rejected(p)
    assert "'b/cut.png'" in err.detail


def test_zip_layout_errors(tmp_path):
    ok = _png(np.zeros((2, 2), np.uint8))
    p = _zip(tmp_path / "flat.zip", {"1.png": ok, "2.png": ok, "c/3.png": ok})
    assert "'1.png' is not inside a class folder" in rejected(p).detail
    q = _zip(tmp_path / "none.zip", {"c/a.txt": b"x"})
    assert rejected(q).title == "No images"
    r = _zip(tmp_path / "two.zip", {"c/1.png": ok, "d/2.png": ok})
    assert "2 samples" in rejected(r).detail


def test_zip_pixel_bomb_checked_before_decoding(tmp_path):
    img = _png(np.zeros((40, 40), np.uint8))
    p = _zip(tmp_path / "px.zip", {f"c/{i}.png": img for i in range(3)})
    err = rejected(p, status=413, max_image_pixels=1000)
    assert "40×40 = 1,600 pixels" in err.detail


def test_zip_not_a_zip_and_options_that_do_not_apply(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"PK garbage")
    assert rejected(p).title == "Corrupt file"
    q = _zip(tmp_path / "ok.zip", {f"c/{i}.png": _png(np.zeros((2, 2), np.uint8)) for i in range(3)})
    assert "folder" in rejected(q, label_column="y").detail
    c = tmp_path / "t.csv"
    c.write_text("a,b\n1,2\n3,4\n5,6\n")
    assert "apply to a .zip" in rejected(c, resize="8x8").detail


# -------------------------------------------------------------------------------------------- general


def test_unsupported_extension_lists_supported(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_bytes(b"whatever")
    err = rejected(p)
    assert err.title == "Unsupported file type"
    for ext in SUPPORTED_EXTENSIONS:
        assert ext in err.detail


def test_format_comes_from_filename_not_path(tmp_path):
    tmp = tmp_path / "upload-123"  # the API streams to an extension-less temp file
    np.savez(tmp.with_suffix(".npz"), X=np.ones((3, 2)))
    tmp.with_suffix(".npz").rename(tmp)
    ds = ingest_file(tmp, "C:\\Users\\me\\mine.NPZ")
    assert ds.meta["filename"] == "mine.NPZ" and ds.X.shape == (3, 2)


def test_options_validation():
    assert IngestOptions(resize="32x28").resize == (32, 28)
    assert IngestOptions(resize=" 8 × 8 ").resize == (8, 8)
    assert IngestOptions(resize="", label_column=" ").resize is None
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        IngestOptions(resize="big")
    with pytest.raises(ValueError, match="between 1 and 4096"):
        IngestOptions(resize=(0, 5))
    with pytest.raises(ValueError):
        IngestOptions(max_files=0)
    with pytest.raises(ValueError):
        IngestOptions(unknown=1)
    err = IngestError("T", "d", 413)
    assert (err.title, err.detail, err.status, str(err)) == ("T", "d", 413, "T: d")
    assert isinstance(err, ValueError)
