"""``.csv`` and ``.parquet`` uploads (README.md): numeric feature columns plus an optional label column."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from taskgauge.datasets.canonical import CanonicalDataset, canonical_dtype
from taskgauge.datasets.ingest.common import check_features, check_names, encode_labels, make_dataset
from taskgauge.datasets.ingest.errors import Ctx, IngestError

LABEL_NAMES = ("label", "y", "target")
_DELIMITERS = (",", ";", "\t")


def _float_or_none(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _too_many_columns(ctx: Ctx, n: int) -> IngestError:
    return ctx.error(
        "Too many columns",
        f"the table has {n:,} columns, more than the limit of {ctx.options.max_columns:,} (TASKGAUGE_MAX_COLUMNS); "
        "select the feature columns you need (or upload the features as a .npy/.npz array)",
        status=413,
    )


def _scan_csv(ctx: Ctx, path: Path) -> tuple[str, bool]:
    """One pass with the csv module: delimiter, whether the first row is a header, ragged rows (with their
    line numbers, which pandas does not give for short rows — it pads them with NaN), the column count against
    ``max_columns`` (from the first row, before anything else) and rows × columns × 8 bytes against the
    expansion limit (what pandas will materialise), before pandas reads anything."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = ""
            for line in fh:
                if line.strip():
                    first = line
                    break
            if not first:
                raise ctx.error("Empty data", "the file is empty; upload a table with a header row and data rows")
            delimiter = max(_DELIMITERS, key=first.count) if any(d in first for d in _DELIMITERS) else ","
            fh.seek(0)
            reader = csv.reader(fh, delimiter=delimiter)
            width = None
            header_line = 0
            has_header = True
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if width is None:
                    width = len(row)
                    if width > ctx.options.max_columns:
                        raise _too_many_columns(ctx, width)
                    header_line = reader.line_num
                    has_header = not all(_float_or_none(c) is not None for c in row)
                    n_rows = 0 if has_header else 1
                    continue
                n_rows += 1
                if len(row) != width:
                    raise ctx.error(
                        "Ragged rows",
                        f"line {reader.line_num} has {len(row)} fields but line {header_line} has {width} "
                        f"(delimiter {delimiter!r}); every row needs the same number of columns",
                    )
    except UnicodeDecodeError as exc:
        raise ctx.error("Not UTF-8 text", f"the file is not UTF-8 text ({exc}); save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise ctx.error("Malformed CSV", f"{exc}; check quoting around that line") from None
    if width is not None:
        # pandas holds every value as 8 bytes (float64/int64): the table's materialised size.
        expanded = n_rows * width * 8
        if expanded > ctx.options.max_expanded_bytes:
            raise ctx.too_large(f"the table ({n_rows:,} rows × {width:,} columns)", expanded)
    return delimiter, has_header


def read_csv_file(ctx: Ctx, path: Path) -> CanonicalDataset:
    delimiter, has_header = _scan_csv(ctx, path)
    try:
        df = pd.read_csv(
            path,
            sep=delimiter,
            header=0 if has_header else None,
            encoding="utf-8-sig",
            skip_blank_lines=True,
            low_memory=False,
            float_precision="round_trip",  # float64 values exactly as written (the canonical X keeps float64)
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise ctx.error("Malformed CSV", f"{exc}; check the delimiter and quoting") from None
    if not has_header:
        df.columns = [str(i) for i in range(df.shape[1])]
    return _from_frame(ctx, df, "csv", delimiter=delimiter, header=has_header)


def read_parquet_file(ctx: Ctx, path: Path) -> CanonicalDataset:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        meta = pf.metadata
        if meta.num_columns > ctx.options.max_columns:
            raise _too_many_columns(ctx, meta.num_columns)
        nested = [f.name for f in pf.schema_arrow if pa.types.is_nested(f.type)]
        if nested:
            raise ctx.error(
                "Nested columns",
                f"column{'s' if len(nested) != 1 else ''} {_list(nested, 5)} hold{'s' if len(nested) == 1 else ''} "
                "lists or structs; taskgauge needs one number per cell. Flatten them into one column per feature "
                "(or upload the arrays as .npz)",
            )
        # What will be materialised: every stored value (not rows × columns) at 8 bytes, or the column's
        # uncompressed bytes when larger (strings).
        expanded = 0
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for j in range(rg.num_columns):
                col = rg.column(j)
                expanded += max(int(col.num_values) * 8, int(col.total_uncompressed_size))
        expanded = max(expanded, int(meta.num_rows) * int(meta.num_columns) * 8)
        if expanded > ctx.options.max_expanded_bytes:
            raise ctx.too_large(f"the table ({meta.num_rows:,} rows × {meta.num_columns:,} columns)", expanded)
        df = pf.read().to_pandas()
    except IngestError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise ctx.error(
            "Corrupt file", f"not a readable Parquet file ({exc}); write it again with pandas.DataFrame.to_parquet"
        ) from None
    return _from_frame(ctx, df, "parquet")


def _pick_label(ctx: Ctx, columns: list[str]) -> str | None:
    wanted = ctx.options.label_column
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise ctx.error(
            "Label column not found",
            f"label_column '{wanted}' is not a column; available columns: {_list(columns)}",
        )
    lower = {c.lower(): c for c in reversed(columns)}
    for name in LABEL_NAMES:
        if name in lower:
            return lower[name]
    return None


def _list(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def _numpy_dtype(s: pd.Series) -> np.dtype:
    """The NumPy dtype a (possibly nullable/extension) column's values have."""
    dt = s.dtype
    return np.dtype(getattr(dt, "numpy_dtype", dt)) if not isinstance(dt, np.dtype) else dt


def _from_frame(ctx: Ctx, df: pd.DataFrame, fmt: str, **extra: Any) -> CanonicalDataset:
    df.columns = [str(c) for c in df.columns]
    if df.shape[1] > ctx.options.max_columns:
        raise _too_many_columns(ctx, df.shape[1])
    columns = list(df.columns)
    if not columns or len(df) == 0:
        raise ctx.error(
            "Empty data", f"the table has {len(df)} rows and {len(columns)} columns; upload at least 3 data rows"
        )
    label = _pick_label(ctx, columns)
    text_column = ctx.options.text_column
    if text_column is not None:
        if text_column not in columns:
            raise ctx.error(
                "Text column not found",
                f"text_column '{text_column}' is not a column; available columns: {_list(columns)}",
            )
        if label == text_column:
            raise ctx.error("Text column is the label", f"'{text_column}' cannot be both the texts and the labels")
        from taskgauge.datasets.ingest.texts import text_table

        return text_table(ctx, df, fmt, text_column, label, **extra)
    features = [c for c in columns if c != label]
    if not features:
        raise ctx.error("No feature columns", f"the only column is the label '{label}'; add numeric feature columns")
    bad = []
    for c in features:
        s = df[c]
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            continue
        coerced = pd.to_numeric(s, errors="coerce")
        offending = s.notna() & coerced.isna()
        i = int(np.argmax(offending.to_numpy())) if offending.any() else 0
        bad.append(f"'{c}' (e.g. {s.iloc[i]!r} at row {i})")
    if bad:
        hint = ""
        if label is None and len(bad) == 1:
            hint = f"; if {bad[0].split(' ')[0]} is the class label, pass label_column={bad[0].split(' ')[0]}"
        raise ctx.error(
            "Non-numeric columns",
            f"{len(bad)} feature column{'s are' if len(bad) != 1 else ' is'} not numeric: {', '.join(bad[:20])}"
            f"{' …' if len(bad) > 20 else ''}. Drop or encode them as numbers (one-hot or ordinal) before "
            f"uploading{hint}",
        )
    check_names(ctx, features, "column name")
    # float64 when any feature column is float64 (kept exactly); float32 for float32, integer and bool columns.
    want = np.float64 if any(canonical_dtype(_numpy_dtype(df[c])) == np.float64 for c in features) else np.float32
    X = df[features].to_numpy(dtype=want, na_value=np.nan)
    pre: dict[str, Any] = {}
    X = check_features(ctx, X, what="the table", columns=features)
    y = classes = None
    if label is not None:
        s = df[label]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            raw = s.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            raw = s.to_numpy(dtype=object)
            raw = np.array(
                [None if (v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))) else v for v in raw],
                dtype=object,
            )
        y, classes = encode_labels(ctx, raw, X.shape[0], what=f"label column '{label}'")
    return make_dataset(
        ctx, X, y, classes, source_format=fmt, preprocessing=pre, label_column=label, feature_columns=features, **extra
    )
