"""The canonical dataset form (docs/deployment.md): X float32 (N×D or N×C×H×W), optional y int64 with class
names, and a JSON ``meta``. Stored as ``.npz`` and always read with ``allow_pickle=False``.

Lives in ``workers`` because both the API (``taskgauge.datasets.ingest`` writes it) and the workers (read it) need it,
and the import direction is app → workers → estimators.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class CanonicalFormatError(ValueError):
    """A stored canonical file that does not have the canonical layout."""


@dataclass
class CanonicalDataset:
    X: np.ndarray  # float32, (N, D) or (N, C, H, W)
    y: np.ndarray | None = None  # int64 (N,) class indices
    classes: list[str] | None = None  # class names, len = number of classes
    meta: dict[str, Any] = field(default_factory=dict)  # source format, preprocessing, …

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_classes(self) -> int | None:
        if self.y is None:
            return None
        return len(self.classes) if self.classes else int(np.unique(self.y).size)

    def flat(self) -> np.ndarray:
        """X as (N, D) float32 (images flattened), what vector estimators consume."""
        return self.X.reshape(self.X.shape[0], -1)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays: dict[str, np.ndarray] = {"X": np.ascontiguousarray(self.X, dtype=np.float32)}
        if self.y is not None:
            arrays["y"] = np.ascontiguousarray(self.y, dtype=np.int64)
        if self.classes is not None:
            arrays["classes"] = np.array([str(c) for c in self.classes], dtype=np.str_)
        arrays["meta"] = np.array(json.dumps(self.meta, sort_keys=True))
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CanonicalDataset":
        return cls._from_npz(io.BytesIO(data))

    @classmethod
    def load(cls, path: str | Path) -> "CanonicalDataset":
        with open(path, "rb") as fh:
            return cls._from_npz(fh)

    @classmethod
    def _from_npz(cls, fh: Any) -> "CanonicalDataset":
        try:
            with np.load(fh, allow_pickle=False) as z:
                if "X" not in z.files:
                    raise CanonicalFormatError("canonical file has no array 'X'")
                X = z["X"]
                y = z["y"] if "y" in z.files else None
                classes = [str(c) for c in z["classes"].tolist()] if "classes" in z.files else None
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        except (OSError, ValueError) as exc:
            raise CanonicalFormatError(f"not a canonical taskgauge dataset: {exc}") from exc
        return cls(X=X, y=y, classes=classes, meta=meta)
