"""Text datasets: ``.jsonl`` files (one JSON object per line with ``text`` and an optional ``label``) and tables
with a text column (:func:`text_table`). The texts are stored as given; X stays N×0 until a worker embeds them
(``taskgauge.datasets.texts``), so the API process never runs a model.

Every bad line is refused with its line number (1-based) and nothing is stored: a line that is not UTF-8, not
JSON, not an object, has no ``text`` or an empty one, or a label that is not a string, number or bool.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.datasets.ingest.common import encode_labels, make_dataset
from taskgauge.datasets.ingest.errors import Ctx

#: longest text accepted, in characters (a sentence encoder reads at most a few hundred tokens of it anyway)
MAX_TEXT_CHARS = 100_000


def read_jsonl_file(ctx: Ctx, path: Path) -> CanonicalDataset:
    texts: list[str] = []
    labels: list[Any] = []
    has_label: bool | None = None
    budget = ctx.options.max_expanded_bytes
    used = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline) carry nothing
            used += len(raw) * 2  # the bytes and the decoded str
            if used > budget:
                raise ctx.too_large("the texts", used)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ctx.error(
                    "Not UTF-8", f"line {lineno} is not valid UTF-8 (byte {exc.start}); save the file as UTF-8"
                ) from None
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ctx.error(
                    "Not JSON",
                    f"line {lineno} is not a JSON object ({exc.msg}); write one object per "
                    'line, e.g. {"text": "…", "label": "…"}',
                ) from None
            if not isinstance(obj, dict):
                raise ctx.error(
                    "Not a JSON object",
                    f"line {lineno} is a JSON {type(obj).__name__}; write one "
                    'object per line, e.g. {"text": "…", "label": "…"}',
                )
            text = obj.get("text")
            if not isinstance(text, str):
                raise ctx.error(
                    "No text",
                    f'line {lineno} has no "text" string'
                    + (f" (it has {type(text).__name__})" if "text" in obj else "")
                    + '; every line needs {"text": "…"}',
                )
            if not text.strip():
                raise ctx.error("Empty text", f"line {lineno} has an empty text; remove the line or give it text")
            if len(text) > MAX_TEXT_CHARS:
                raise ctx.error(
                    "Text too long",
                    f"line {lineno} has {len(text):,} characters, more than {MAX_TEXT_CHARS:,}; split or shorten it",
                    status=413,
                )
            line_has_label = obj.get("label") is not None
            if has_label is None:
                has_label = line_has_label
            elif has_label != line_has_label:
                raise ctx.error(
                    "Missing label",
                    f"line {lineno} {'has' if line_has_label else 'has no'} label but "
                    f"the first line {'has none' if line_has_label else 'has one'}; label every line "
                    "or none",
                )
            if line_has_label:
                label = obj["label"]
                if not isinstance(label, (str, int, float, bool)):
                    raise ctx.error(
                        "Bad label",
                        f"line {lineno}: the label must be a string or a number, got {type(label).__name__}",
                    )
                labels.append(label)
            texts.append(text)
    return _text_dataset(ctx, texts, labels if has_label else None, source_format="jsonl")


def text_table(ctx: Ctx, df: Any, fmt: str, text_column: str, label: str | None, **extra: Any) -> CanonicalDataset:
    """A table read as a text dataset: ``text_column`` holds the texts, ``label`` (if any) the classes."""
    col = df[text_column]
    texts: list[str] = []
    for i, v in enumerate(col.tolist()):
        if not isinstance(v, str) or not v.strip():
            raise ctx.error(
                "Empty text",
                f"row {i} of text column '{text_column}' is "
                f"{'empty' if isinstance(v, str) else repr(v)}; every row needs text",
            )
        texts.append(v)
    labels = None
    if label is not None:
        labels = df[label].tolist()
    return _text_dataset(ctx, texts, labels, source_format=fmt, text_column=text_column, label_column=label, **extra)


def _text_dataset(
    ctx: Ctx,
    texts: list[str],
    labels: list[Any] | None,
    *,
    source_format: str,
    label_column: str | None = None,
    **extra: Any,
) -> CanonicalDataset:
    if not texts:
        raise ctx.error("Empty data", "the file holds no texts; upload at least 3 texts")
    y = classes = None
    if labels is not None:
        raw = np.empty(len(labels), dtype=object)
        raw[:] = labels
        y, classes = encode_labels(ctx, raw, len(texts), what="label")
    X = np.zeros((len(texts), 0), dtype=np.float32)
    ds = make_dataset(
        ctx,
        X,
        y,
        classes,
        source_format=source_format,
        preprocessing={},
        label_column=label_column,
        kind="text",
        **extra,
    )
    ds.texts = texts
    return ds
