"""Regenerate the example datasets shipped in ``examples/`` (byte for byte: fixed zip timestamps).

    .venv/bin/python examples/make_examples.py          # writes examples/digits.npz

``digits.npz``: scikit-learn's bundled handwritten digits (1797 samples of 8×8 = 64 pixels, values 0..16,
10 classes), ``X`` float32 (1797, 64) and ``y`` int64 (1797,). Try it with ``taskgauge analyse
examples/digits.npz``; MLE (k=20) reads about 6.8 on it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` but reproducible: every member gets the same fixed timestamp."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def make_digits(path: Path = HERE / "digits.npz") -> Path:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    write_npz(path, X=X.astype(np.float32), y=y.astype(np.int64))
    return path


if __name__ == "__main__":
    print(make_digits())
