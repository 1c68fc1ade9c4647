"""Content-addressed blob store under ``DATA_DIR/blobs`` (docs/deployment.md).

A blob's name is the SHA-256 of its bytes: ``blobs/ab/abcdef…``. Blobs are the canonical ``.npz`` files;
:func:`deterministic_npz` rewrites the zip entries with a fixed timestamp so that the same canonical dataset
always gives the same bytes (``numpy.savez`` stamps the current time into the zip), which is what makes
"the same file uploaded twice is stored once" hold.

Writing is two-phase so the API can make the dataset row and the blob appear together: :meth:`stage` writes a
temp file next to the store (fsync'd), :meth:`publish` renames it into place (atomic; a no-op when the blob
exists), and the caller deletes the blob again if its transaction fails and no row references it.
Lives in ``workers`` because workers read blobs and must not import ``app``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def deterministic_npz(data: bytes) -> bytes:
    """The same ``.npz`` with every zip entry's timestamp set to 1980-01-01 (stored, uncompressed, same order).

    >>> import numpy as np, io, time
    >>> def npz():
    ...     b = io.BytesIO(); np.savez(b, X=np.zeros(3, np.float32)); return b.getvalue()
    >>> deterministic_npz(npz()) == deterministic_npz(npz())
    True
    """
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=_FIXED_TIME)
            fixed.compress_type = zipfile.ZIP_STORED
            fixed.external_attr = 0o600 << 16
            dst.writestr(fixed, src.read(info))
    return out.getvalue()


@dataclass(frozen=True)
class StagedBlob:
    sha256: str
    size: int
    temp_path: Path


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / ".tmp"

    def ensure(self) -> "BlobStore":
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def stage(self, data: bytes) -> StagedBlob:
        """Write ``data`` to a temp file inside the store (same filesystem, so publishing is a rename)."""
        self.ensure()
        digest = hashlib.sha256(data).hexdigest()
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix=digest[:8] + "-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return StagedBlob(digest, len(data), Path(name))

    def publish(self, staged: StagedBlob) -> bool:
        """Move a staged blob into place; returns True when this call created the blob file."""
        final = self.path(staged.sha256)
        if final.is_file():
            staged.temp_path.unlink(missing_ok=True)
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.temp_path, final)
        return True

    def discard(self, staged: StagedBlob) -> None:
        staged.temp_path.unlink(missing_ok=True)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """Every published blob file (tests use this to check that nothing was left behind)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("??/*") if p.is_file())
