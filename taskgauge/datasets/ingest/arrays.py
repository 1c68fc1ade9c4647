"""``.npy`` and ``.npz`` uploads, read without pickle (README.md).

Arrays are parsed with our own small reader over NumPy's public header functions so that the declared size is
checked against the limit before any memory is allocated, an object (pickled) array is refused from its header
alone, and a member of an ``.npz`` is decompressed through a byte budget — nothing here can unpickle.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npformat

from taskgauge.datasets.canonical import CanonicalDataset, canonical_dtype
from taskgauge.datasets.ingest.common import check_features, encode_labels, make_dataset, too_many_classes
from taskgauge.datasets.ingest.errors import Ctx, IngestError

_CHUNK = 16 * 1024 * 1024
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


class ByteBudget:
    """Bytes left before the expanded data passes ``max_expanded_mb``."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.left = ctx.options.max_expanded_bytes
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        self.check(nbytes, what)
        self.left -= nbytes
        self.used += nbytes

    def check(self, nbytes: int, what: str) -> None:
        """Refuse (413) when ``nbytes`` more would pass the limit, without charging them."""
        if nbytes > self.left:
            raise self.ctx.too_large(what, self.used + nbytes)


_KIND_NAMES = {"U": "strings", "S": "bytes", "c": "complex numbers", "M": "dates", "m": "time spans", "V": "raw bytes"}


def _wrong_kind(ctx: Ctx, what: str, dtype: np.dtype, labels: bool = False) -> IngestError:
    kind = _KIND_NAMES.get(dtype.kind, f"dtype {dtype}")
    if labels:
        return ctx.error("Bad labels", f"{what} has dtype {dtype}; use integers or strings as class labels")
    return ctx.error(
        "Non-numeric data",
        f"{what} holds {kind}; taskgauge needs real numbers. Convert the features to int or float "
        "(e.g. X.astype('float32')) and upload again",
    )


def _pickled(ctx: Ctx, what: str) -> IngestError:
    return ctx.error(
        "Pickled object array",
        f"array {what} is an object (pickled) array, which taskgauge never loads because unpickling untrusted "
        "data can run code; save numeric arrays instead, e.g. np.savez('data.npz', X=X.astype('float32'), "
        "y=y.astype('int64'))",
    )


def _corrupt(ctx: Ctx, what: str, exc: BaseException | None = None) -> IngestError:
    why = f" ({exc})" if exc is not None and str(exc) else ""
    return ctx.error(
        "Corrupt file",
        f"{what} is truncated or corrupt{why}; save it again with numpy (np.save / np.savez) and re-upload",
    )


def read_npy(
    ctx: Ctx,
    fh: IO[bytes],
    what: str,
    budget: ByteBudget,
    *,
    kinds: str = "biuf",
    count_for: str | None = None,
    max_count: int | None = None,
    max_count_error: Any = None,
) -> np.ndarray:
    """Read one ``.npy`` stream: header first (dtype, shape and size checked), then exactly the declared bytes.

    ``kinds`` are the dtype kinds accepted (numeric for features; labels and class names also take strings).
    The bytes charged to ``budget`` are what will really be materialised: elements × the dtype's itemsize, and for
    features (``count_for``) the canonical float copy as well. Shapes are multiplied in Python ints.
    """
    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
        else:
            shape, fortran, dtype = npformat._read_array_header(fh, version)  # type: ignore[attr-defined]  # (3, 0)
    except ValueError as exc:
        raise ctx.error(
            "Not a NumPy array",
            f"{what} is not a valid .npy array ({exc}); save it with np.save / np.savez",
        ) from None
    except _CORRUPT as exc:
        raise _corrupt(ctx, what, exc) from None
    if dtype.hasobject:
        raise _pickled(ctx, what)
    if dtype.fields is not None or dtype.subdtype is not None:
        raise ctx.error(
            "Structured array",
            f"array {what} has a structured dtype {dtype}; save plain numeric arrays (one column per feature)",
        )
    if dtype.kind not in kinds:
        raise _wrong_kind(ctx, what, dtype, labels="U" in kinds)
    if dtype.itemsize == 0:
        raise ctx.error(
            "Zero-size dtype",
            f"array {what} has dtype {dtype.str}, whose elements have no bytes; save it with a real element type "
            "(e.g. float32 features, int64 or string labels)",
        )
    if any(not isinstance(s, int) or s < 0 for s in shape):
        raise ctx.error(
            "Not a NumPy array",
            f"{what} declares the impossible shape {list(shape)} (negative dimensions); save it again with np.save",
        )
    count = math.prod(shape)  # Python ints: no int64 overflow
    nbytes = count * dtype.itemsize
    budget.take(nbytes, f"array {what}")
    if max_count is not None and count > max_count:
        raise max_count_error(count)
    if count_for is not None:
        # The canonical copy check_features will make (another dtype, Fortran order or channels-last images),
        # counted up front: the raw array and its copy live together.
        canonical = canonical_dtype(dtype)
        channels_last = len(shape) == 4 and shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4)
        if dtype != canonical or fortran or channels_last:
            budget.take(count * canonical.itemsize, f"array {what}")
    out = np.empty(count, dtype=dtype)
    view = memoryview(out.view(np.uint8).reshape(-1)) if nbytes else memoryview(b"")  # type: ignore[arg-type]
    pos = 0
    try:
        while pos < nbytes:
            got = fh.readinto(view[pos : pos + min(_CHUNK, nbytes - pos)]) if hasattr(fh, "readinto") else None
            if got is None:
                chunk = fh.read(min(_CHUNK, nbytes - pos))
                got = len(chunk)
                view[pos : pos + got] = chunk
            if not got:
                raise _corrupt(ctx, what, EOFError(f"{pos} of {nbytes} bytes present"))
            pos += got
    except _CORRUPT as exc:
        raise _corrupt(ctx, what, exc) from None
    if fortran:
        return out.reshape(shape[::-1]).transpose()
    return out.reshape(shape)


def _as_samples(ctx: Ctx, X: np.ndarray, what: str, preprocessing: dict[str, Any]) -> np.ndarray:
    """Shape rules: (N, D) tables, (N, H, W) -> (N, 1, H, W), (N, C, H, W) images; (N, H, W, C) with C in
    {1, 3, 4} is moved to channels-first and the move is recorded in ``preprocessing``."""
    if X.ndim == 1:
        raise ctx.error(
            "One-dimensional array",
            f"{what} has shape {list(X.shape)}; taskgauge needs samples × features. If every value is one "
            "sample, save X.reshape(-1, 1); if it is one sample, you need at least 3",
        )
    if X.ndim == 3:
        preprocessing["added_channel_axis"] = True
        return X[:, None, :, :]
    if X.ndim == 4:
        if X.shape[1] not in (1, 3, 4) and X.shape[3] in (1, 3, 4):
            preprocessing["channels_last_to_first"] = True
            return X.transpose(0, 3, 1, 2)  # a view: check_features makes the one contiguous canonical copy
        return X
    if X.ndim > 4:
        raise ctx.error(
            "Too many dimensions",
            f"{what} has shape {list(X.shape)}; use (N, D) features or (N, C, H, W) images",
        )
    return X


def _dtype_note(X: np.ndarray, preprocessing: dict[str, Any]) -> None:
    want = canonical_dtype(X.dtype)
    if X.dtype != want:
        preprocessing["cast"] = f"{X.dtype} -> {want}"


def read_npy_file(ctx: Ctx, path: Path) -> CanonicalDataset:
    if ctx.options.label_column is not None:
        raise ctx.error(
            "No labels in a .npy",
            "a .npy file holds one array, so label_column cannot select labels; save features and labels "
            "together with np.savez('data.npz', X=X, y=y)",
        )
    budget = ByteBudget(ctx)
    with open(path, "rb") as fh:
        X = read_npy(ctx, fh, "the array", budget, count_for="X")
    pre: dict[str, Any] = {}
    X = _as_samples(ctx, X, "the array", pre)
    _dtype_note(X, pre)
    X = check_features(ctx, X, what="the array")
    return make_dataset(ctx, X, None, None, source_format="npy", preprocessing=pre)


def read_npz_file(ctx: Ctx, path: Path) -> CanonicalDataset:
    budget = ByteBudget(ctx)
    try:
        zf = zipfile.ZipFile(path)
    except _CORRUPT as exc:
        raise ctx.error(
            "Corrupt file",
            f"truncated, corrupt or not a .npz (zip) archive ({exc}); save it with np.savez / "
            "np.savez_compressed and re-upload",
        ) from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > ctx.options.max_files:
            raise ctx.error(
                "Too many entries",
                f"the archive has {len(infos)} entries, more than the limit of {ctx.options.max_files}",
                status=413,
            )
        declared = sum(i.file_size for i in infos)
        if declared > ctx.options.max_expanded_bytes:
            raise ctx.too_large("the archive", declared)
        arrays = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}
        if not arrays:
            raise ctx.error(
                "Empty data",
                "the .npz holds no arrays; save features with np.savez('data.npz', X=X, y=y)",
            )
        y_name = ctx.options.label_column
        if y_name is not None and y_name not in arrays:
            raise ctx.error(
                "Label array not found",
                f"label_column '{y_name}' is not an array of this .npz; its arrays are: {', '.join(sorted(arrays))}",
            )
        if y_name is None and "y" in arrays:
            y_name = "y"
        if "X" in arrays:
            x_name = "X"
        else:
            candidates = sorted(set(arrays) - {y_name, "classes", "meta"})
            if len(candidates) != 1:
                found = ", ".join(sorted(arrays))
                raise ctx.error(
                    "Which array is X?",
                    f"no array named 'X' and {'several' if candidates else 'no'} other arrays ({found}); name "
                    "the features 'X' and the labels 'y': np.savez('data.npz', X=X, y=y)",
                )
            x_name = candidates[0]

        def load(name: str, **kw: Any) -> np.ndarray:
            try:
                with zf.open(arrays[name]) as fh:
                    return read_npy(ctx, fh, f"'{name}'", budget, **kw)
            except _CORRUPT as exc:
                raise _corrupt(ctx, f"array '{name}'", exc) from None

        X = load(x_name, count_for="X")
        y_raw = load(y_name, kinds="biufUS") if y_name is not None else None
        hint = None
        if y_raw is not None and "classes" in arrays:
            c = load(
                "classes",
                kinds="biufUS",
                max_count=ctx.options.max_classes,
                max_count_error=lambda n: too_many_classes(ctx, n, "the 'classes' array"),
            )
            if c.ndim == 1 and c.dtype.kind in "US":
                hint = [str(v) for v in c.tolist()]
    pre: dict[str, Any] = {}
    X = _as_samples(ctx, X, f"'{x_name}'", pre)
    _dtype_note(X, pre)
    X = check_features(ctx, X, what=f"'{x_name}'")
    y = classes = None
    if y_raw is not None:
        y, classes = encode_labels(ctx, y_raw, X.shape[0], what=f"'{y_name}'", classes_hint=hint)
    return make_dataset(
        ctx,
        X,
        y,
        classes,
        source_format="npz",
        preprocessing=pre,
        label_column=y_name,
        arrays={"X": x_name, "y": y_name},
    )
