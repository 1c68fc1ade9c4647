"""The canonical dataset form (docs/deployment.md): X float32 or float64 (N×D or N×C×H×W), optional y int64 with
class names, a JSON ``meta`` and, for a text dataset, its texts (UTF-8 bytes + offsets; X is then N×0 until a
worker embeds them). Stored as an uncompressed ``.npz`` and always read with ``allow_pickle=False``.

X is float64 when the upload was float64 (tables with a float64 column, ``.npy``/``.npz`` float64 arrays), so that
nothing is rounded away; everything else (integers, bools, float16/32, images) is float32.

:func:`write_canonical` streams the arrays straight into the ``.npz`` file: the zip entries get a fixed timestamp
(1980-01-01), are stored uncompressed in the order X, y, classes, meta, and their data is written from the arrays'
own memory (no ``to_bytes`` copy, no rewrite pass). So the same canonical dataset always gives the same bytes, which
is what makes "the same data uploaded twice is stored once" hold. ``meta["filename"]`` is never part of those bytes
(:data:`BLOB_META_EXCLUDED`): the file name lives on the dataset row.

:func:`read_sample` reads one row of X from a stored file by offset (thumbnails), never the whole array.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npformat

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_WRITE_CHUNK = 16 * 1024 * 1024
#: meta keys that describe the upload rather than the data: kept on the dataset row, not in the content-addressed
#: blob (the same data uploaded under two names is stored once).
BLOB_META_EXCLUDED = ("filename",)


class CanonicalFormatError(ValueError):
    """A stored canonical file that does not have the canonical layout."""


def canonical_dtype(dtype: np.dtype) -> np.dtype:
    """float64 for float64 (and wider) input, float32 for everything else (ints, bools, float16/32)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize >= 8:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


@dataclass
class CanonicalDataset:
    X: np.ndarray  # float32 or float64, (N, D) or (N, C, H, W)
    y: np.ndarray | None = None  # int64 (N,) class indices
    classes: list[str] | None = None  # class names, len = number of classes
    meta: dict[str, Any] = field(default_factory=dict)  # source format, preprocessing, …
    #: a text dataset's texts, one per sample (X is then N×0 until a worker embeds them; docs/deployment.md)
    texts: list[str] | None = None

    @property
    def needs_embedding(self) -> bool:
        """A text dataset whose X has not been computed from its texts yet."""
        return self.texts is not None and self.X.ndim == 2 and self.X.shape[1] == 0

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_classes(self) -> int | None:
        if self.y is None:
            return None
        return len(self.classes) if self.classes else int(np.unique(self.y).size)

    def flat(self) -> np.ndarray:
        """X as (N, D) (images flattened), what vector estimators consume."""
        return self.X.reshape(self.X.shape[0], -1)

    def write(self, dest: str | Path | IO[bytes]) -> int:
        """Write the canonical ``.npz`` to ``dest`` (a path or a seekable binary file); returns its size."""
        return write_canonical(dest, self)

    def to_bytes(self) -> bytes:
        """The canonical ``.npz`` as bytes (small data and tests; the service streams with :meth:`write`)."""
        buf = io.BytesIO()
        self.write(buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> CanonicalDataset:
        return cls._from_npz(io.BytesIO(data))

    @classmethod
    def load(cls, path: str | Path) -> CanonicalDataset:
        with open(path, "rb") as fh:
            return cls._from_npz(fh)

    @classmethod
    def _from_npz(cls, fh: Any) -> CanonicalDataset:
        try:
            with np.load(fh, allow_pickle=False) as z:
                if "X" not in z.files:
                    raise CanonicalFormatError("canonical file has no array 'X'")
                X = z["X"]
                y = z["y"] if "y" in z.files else None
                classes = [str(c) for c in z["classes"].tolist()] if "classes" in z.files else None
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
                texts = _decode_texts(z["texts_utf8"], z["texts_offsets"]) if "texts_offsets" in z.files else None
        except (OSError, ValueError) as exc:
            raise CanonicalFormatError(f"not a canonical taskgauge dataset: {exc}") from exc
        return cls(X=X, y=y, classes=classes, meta=meta, texts=texts)


def _encode_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts as one UTF-8 byte array and N+1 offsets: compact (a fixed-width unicode array would pad every text to
    the longest at 4 bytes a character) and never pickled."""
    blobs = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets


def _decode_texts(utf8: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = utf8.tobytes()
    if (
        offsets.ndim != 1
        or offsets.size < 1
        or offsets[0] != 0
        or offsets[-1] != len(raw)
        or (np.diff(offsets) < 0).any()
    ):
        raise CanonicalFormatError("texts_offsets do not describe texts_utf8")
    return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _npy_header(arr: np.ndarray) -> bytes:
    """The ``.npy`` header ``np.save`` would write for ``arr`` (version 1.0 when it fits, else 2.0)."""
    d = npformat.header_data_from_array_1_0(arr)
    buf = io.BytesIO()
    try:
        npformat.write_array_header_1_0(buf, d)
    except ValueError:
        buf = io.BytesIO()
        npformat.write_array_header_2_0(buf, d)
    return buf.getvalue()


def _entries(ds: CanonicalDataset) -> list[tuple[str, np.ndarray]]:
    X = ds.X
    want = canonical_dtype(X.dtype)
    if X.dtype != want or not X.flags.c_contiguous:
        X = np.ascontiguousarray(X, dtype=want)  # a copy only for data that was not canonical already
    out = [("X", X)]
    if ds.y is not None:
        out.append(("y", np.ascontiguousarray(ds.y, dtype=np.int64)))
    if ds.classes is not None and ds.y is not None:
        out.append(("classes", np.array([str(c) for c in ds.classes], dtype=np.str_)))
    if ds.texts is not None:
        utf8, offsets = _encode_texts(ds.texts)
        out += [("texts_utf8", utf8), ("texts_offsets", offsets)]
    meta = {k: v for k, v in ds.meta.items() if k not in BLOB_META_EXCLUDED}
    out.append(("meta", np.array(json.dumps(meta, sort_keys=True))))
    return out


def write_canonical(dest: str | Path | IO[bytes], ds: CanonicalDataset) -> int:
    """Stream ``ds`` into a deterministic, uncompressed ``.npz``; returns the number of bytes written.

    The arrays' bytes go from their own memory to the file in 16 MB slices (``memoryview``), so writing costs no
    copy of the data. The result is byte-for-byte what ``np.savez`` followed by a timestamp-fixing rewrite gives.
    """
    if isinstance(dest, (str, Path)):
        with open(dest, "wb") as fh:
            return write_canonical(fh, ds)
    start = dest.tell()
    write_npz(dest, _entries(ds))
    return dest.tell() - start


def write_npz(dest: IO[bytes], entries: Iterable[tuple[str, np.ndarray]]) -> None:
    """Stream C-contiguous arrays (``(name, array)``, never of objects) into a deterministic, uncompressed ``.npz``:
    byte for byte ``np.savez`` followed by :func:`taskgauge.blobs.deterministic_npz`, without a copy of the data."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in entries:
            if arr.dtype.hasobject or not arr.flags.c_contiguous:
                raise ValueError(f"write_npz: {name} must be a C-contiguous array of plain values")
            header = _npy_header(arr)
            info = zipfile.ZipInfo(name + ".npy", date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o600 << 16
            info.file_size = len(header) + arr.nbytes
            with zf.open(info, "w") as out:
                out.write(header)
                if arr.nbytes:
                    view = memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # numpy stubs
                    for pos in range(0, arr.nbytes, _WRITE_CHUNK):
                        out.write(view[pos : pos + _WRITE_CHUNK])


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


def _stored_data_offset(raw: IO[bytes], info: zipfile.ZipInfo) -> int | None:
    """Where an uncompressed entry's bytes start in the archive, from its local header; None if compressed."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    raw.seek(info.header_offset)
    head = raw.read(_LOCAL_HEADER.size)
    if len(head) != _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
        raise CanonicalFormatError("corrupt zip local header for X.npy")
    fields = _LOCAL_HEADER.unpack(head)
    return info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]


def read_sample(path: str | Path, index: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Row ``index`` of X of the canonical file ``path`` and X's full shape, reading only that row's bytes
    (thumbnails of a large image dataset must not load it)."""
    with open(path, "rb") as raw:
        try:
            zf = zipfile.ZipFile(raw)
            info = zf.getinfo("X.npy")
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise CanonicalFormatError(f"not a canonical taskgauge dataset: {exc}") from exc
        offset = _stored_data_offset(raw, info)
        fh: IO[bytes] = raw if offset is not None else zf.open(info)
        if offset is not None:
            raw.seek(offset)
        try:
            version = npformat.read_magic(fh)
            shape, fortran, dtype = npformat._read_array_header(fh, version)  # type: ignore[attr-defined]  # noqa: SLF001
            if dtype.hasobject or fortran or not shape:
                raise CanonicalFormatError("X.npy is not a C-ordered numeric array")
            if not 0 <= index < shape[0]:
                raise IndexError(index)
            row_items = int(np.prod(shape[1:], dtype=object)) if len(shape) > 1 else 1
            row_bytes = row_items * dtype.itemsize
            skip = index * row_bytes
            if offset is not None:
                fh.seek(skip, io.SEEK_CUR)
            else:  # a compressed member (never written by taskgauge): decompress up to the row, keep nothing
                while skip:
                    got = fh.read(min(skip, _WRITE_CHUNK))
                    if not got:
                        raise CanonicalFormatError("X.npy is truncated")
                    skip -= len(got)
            data = fh.read(row_bytes)
        finally:
            if fh is not raw:
                fh.close()
        if len(data) != row_bytes:
            raise CanonicalFormatError("X.npy is truncated")
        row = np.frombuffer(data, dtype=dtype).reshape(shape[1:])
        return row, tuple(int(s) for s in shape)
