"""Checks and conversions every format shares: numeric X to float32, finiteness, sample counts, labels to
class indices (docs/deployment.md, README.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskgauge.datasets.canonical import CanonicalDataset, canonical_dtype
from taskgauge.datasets.ingest.errors import Ctx

MIN_SAMPLES = 3
#: longest class or column name kept (they are stored in the dataset row and returned by its read endpoint)
MAX_NAME_CHARS = 1000
#: most characters of all class and column names together (the dataset row's size)
MAX_NAMES_TOTAL_CHARS = 4_000_000
_NUMERIC_KINDS = "biuf"


def _fmt(v: Any) -> str:
    s = repr(v.item() if isinstance(v, np.generic) else v)
    return s if len(s) <= 40 else s[:37] + "..."


def check_features(ctx: Ctx, X: np.ndarray, *, what: str = "X", columns: Sequence[str] | None = None) -> np.ndarray:
    """Return X in its canonical dtype (float64 for float64 input, float32 otherwise; C-contiguous), rejecting
    non-numeric dtypes, empty data, NaN/Inf and too few samples.

    ``X`` may be a view (a transpose, an added axis): the result is the one canonical copy, or ``X`` itself when it
    is canonical already. The finiteness checks run over row blocks, so they need no array of X's size.
    ``columns`` (tables) lets the NaN message name the column as well as the row.
    """
    if X.dtype.kind not in _NUMERIC_KINDS:
        kind = {"U": "strings", "S": "bytes", "c": "complex numbers", "M": "dates", "m": "time spans"}.get(
            X.dtype.kind, f"dtype {X.dtype}"
        )
        raise ctx.error(
            "Non-numeric data",
            f"{what} holds {kind}; taskgauge needs real numbers. Convert the features to int or float "
            "(e.g. X.astype('float32')) and upload again",
        )
    if X.ndim == 0 or X.shape[0] == 0:
        raise ctx.error("Empty data", f"{what} has no samples (shape {list(X.shape)}); upload at least {MIN_SAMPLES}")
    if X.ndim >= 2 and math.prod(X.shape[1:]) == 0:
        raise ctx.error("Empty data", f"{what} has no features (shape {list(X.shape)}); upload at least one feature")
    n = X.shape[0]
    if n < MIN_SAMPLES:
        raise ctx.error(
            "Too few samples",
            f"{what} has {n} sample{'s' if n != 1 else ''}; every estimator needs at least {MIN_SAMPLES} "
            "(most need many more); upload more data",
        )
    _check_finite(ctx, X, what=what, columns=columns)
    want = canonical_dtype(X.dtype)
    if X.dtype == want and X.flags.c_contiguous:
        return X
    out = np.empty(X.shape, dtype=want)
    with np.errstate(over="ignore"):  # overflow (float128 input) is reported below, as an error
        np.copyto(out, X, casting="unsafe")
    if X.dtype.kind == "f" and X.dtype.itemsize > want.itemsize:
        # Finite values above the canonical range would become inf silently.
        _check_finite(ctx, out, what=what, columns=columns, overflow=True)
    return out


def _row_blocks(X: np.ndarray) -> Any:
    """(first row, block) over X in slices of about 16 MB."""
    row = max(1, math.prod(X.shape[1:]) * X.dtype.itemsize)
    step = max(1, (16 * 1024 * 1024) // row)
    for start in range(0, X.shape[0], step):
        yield start, X[start : start + step]


def _check_finite(ctx: Ctx, X: np.ndarray, *, what: str, columns: Sequence[str] | None, overflow: bool = False) -> None:
    if X.dtype.kind != "f":
        return
    count = n_nan = n_rows = 0
    first = first_col = None
    for start, block in _row_blocks(X):
        bad = ~np.isfinite(block)
        if not bad.any():
            continue
        rows = bad.reshape(bad.shape[0], -1).any(axis=1)
        count += int(bad.sum())
        n_nan += int(np.isnan(block).sum())
        n_rows += int(rows.sum())
        if first is None:
            r = int(np.argmax(rows))
            first = start + r
            if columns is not None and X.ndim == 2:
                first_col = int(np.argmax(bad[r]))
    if not count:
        return
    where = f"row {first}"
    if first_col is not None and columns is not None:
        where += f", column '{columns[first_col]}'"
    if overflow:
        raise ctx.error(
            "Values out of range",
            f"{what} has {count} value{'s' if count != 1 else ''} beyond {X.dtype}'s range, first at "
            f"{where} (0-based); rescale the features",
        )
    kinds = " and ".join(k for k, c in (("NaN", n_nan), ("Inf", count - n_nan)) if c)
    raise ctx.error(
        "Missing or infinite values",
        f"{what} has {count} {kinds} value{'s' if count != 1 else ''} in {n_rows} "
        f"row{'s' if n_rows != 1 else ''}, first at {where} (0-based); drop or impute those rows",
    )


def too_many_classes(ctx: Ctx, n: int, what: str) -> Any:
    return ctx.error(
        "Too many classes",
        f"{what} has {n:,} classes, more than the limit of {ctx.options.max_classes:,} "
        "(TASKGAUGE_MAX_CLASSES); merge rare classes or upload a subset",
        status=413,
    )


def check_names(ctx: Ctx, names: Sequence[str], what: str) -> None:
    """Class and column names are stored and shown: each at most :data:`MAX_NAME_CHARS` characters."""
    for name in names:
        if "\x00" in name:
            raise ctx.error(
                "NUL in a name",
                f"{what} {name[:40]!r} contains a NUL character, which cannot be stored; remove it from the data",
            )
        if len(name) > MAX_NAME_CHARS:
            raise ctx.error(
                "Name too long",
                f"{what} {name[:40]!r}… is {len(name):,} characters long, more than the limit of {MAX_NAME_CHARS}; "
                "use shorter names",
                status=413,
            )


def encode_labels(
    ctx: Ctx, y: np.ndarray, n: int, *, what: str = "y", classes_hint: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Class labels -> (int64 indices 0..C-1, class names).

    Integers, bools, integral floats (``1.0`` -> ``1``) and strings are accepted; classes are the sorted
    distinct values, so ``["cat", "dog"]`` -> ``[0, 1]`` and ``[3, 7]`` -> ``[0, 1]`` named ``"3"``, ``"7"``.
    A canonical file's own ``classes`` array (``classes_hint``) is kept when ``y`` already indexes into it.
    One class is allowed: estimators that need two say so themselves.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ctx.error(
            "Bad labels",
            f"{what} has shape {list(y.shape)}; labels must be one class per sample, shape [{n}] "
            "(one-hot labels: use y.argmax(1))",
        )
    if y.shape[0] != n:
        raise ctx.error(
            "Bad labels", f"{what} has {y.shape[0]} labels but X has {n} samples; give exactly one label per sample"
        )
    kind = y.dtype.kind
    if kind == "O":
        missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in y], dtype=bool)
        if missing.any():
            raise _missing_labels(ctx, what, missing)
        y = np.array([str(v) for v in y], dtype=np.str_)
        kind = "U"
    elif kind == "S":
        y = np.char.decode(y, "utf-8", errors="replace")
        kind = "U"
    if kind == "f":
        missing = ~np.isfinite(y)
        if missing.any():
            raise _missing_labels(ctx, what, missing)
        frac = y != np.round(y)
        if frac.any():
            i = int(np.argmax(frac))
            raise ctx.error(
                "Labels are not classes",
                f"{what} value {_fmt(y[i])} at row {i} is not a whole number; labels must be class ids or "
                "names (taskgauge measures classification tasks; bin a regression target into classes first)",
            )
        y = y.astype(np.int64)
        kind = "i"
    if kind not in "biuU":
        raise ctx.error("Bad labels", f"{what} has dtype {y.dtype}; use integers or strings as class labels")
    if classes_hint is not None and kind in "iu" and y.size and y.min() >= 0 and y.max() < len(classes_hint):
        names = [str(c) for c in classes_hint]
        if len(names) > ctx.options.max_classes:
            raise too_many_classes(ctx, len(names), "the 'classes' array")
        check_names(ctx, names, "class name")
        return y.astype(np.int64), names
    uniques, inverse = np.unique(y, return_inverse=True)
    if uniques.size > ctx.options.max_classes:
        raise too_many_classes(ctx, int(uniques.size), what)
    names = [str(u) for u in uniques.tolist()]
    check_names(ctx, names, "class name")
    return inverse.reshape(-1).astype(np.int64), names


def _missing_labels(ctx: Ctx, what: str, missing: np.ndarray):
    count = int(missing.sum())
    return ctx.error(
        "Missing labels",
        f"{what} has {count} missing label{'s' if count != 1 else ''}, first at row {int(np.argmax(missing))} "
        "(0-based); drop those rows or give them a class",
    )


def make_dataset(
    ctx: Ctx,
    X: np.ndarray,
    y: np.ndarray | None,
    classes: list[str] | None,
    *,
    source_format: str,
    preprocessing: dict[str, Any],
    label_column: str | None = None,
    **extra_meta: Any,
) -> CanonicalDataset:
    if classes is not None:
        if len(classes) > ctx.options.max_classes:
            raise too_many_classes(ctx, len(classes), "the data")
        check_names(ctx, classes, "class name")
    check_names(ctx, list(extra_meta.get("feature_columns") or []), "column name")
    names = (classes or []) + list(extra_meta.get("feature_columns") or [])
    total = sum(len(str(n)) for n in names)
    if total > MAX_NAMES_TOTAL_CHARS:
        raise ctx.error(
            "Names too long",
            f"the class and column names take {total:,} characters together, more than the limit of "
            f"{MAX_NAMES_TOTAL_CHARS:,}; use shorter names or fewer columns",
            status=413,
        )
    meta: dict[str, Any] = {
        "source_format": source_format,
        "filename": ctx.filename,
        "preprocessing": preprocessing,
        "label_column": label_column,
    }
    meta.update(extra_meta)
    return CanonicalDataset(X=X, y=y, classes=classes if y is not None else None, meta=meta)
