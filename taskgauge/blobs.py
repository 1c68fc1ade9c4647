"""Content-addressed blob store under ``DATA_DIR/blobs`` (docs/deployment.md).

A blob's name is the SHA-256 of its bytes: ``blobs/ab/abcdef…``. Blobs are the canonical ``.npz`` files, written
deterministically (:func:`taskgauge.datasets.canonical.write_canonical`: fixed timestamps, no file name inside), so
the same data always gives the same bytes, which is what makes "the same data uploaded twice is stored once" hold.
:func:`deterministic_npz` turns any ``.npz`` into that form (older callers).

Writing is two-phase so the API can make the dataset row and the blob appear together: :meth:`new_part` gives a
temp file inside the store that a writer (the ingest subprocess) fills, :meth:`stage_file` hashes it (fsync'd),
:meth:`publish` renames it into place (atomic; a no-op when the blob exists), and the caller deletes the blob again
if its transaction fails and no row references it. :meth:`stage` does the same for bytes already in memory.

Temp files are held under an exclusive ``flock`` while their writer lives; :func:`sweep_stale` (run by
:meth:`ensure` at startup, and by the API for its upload folder) removes the ones whose writer died — a SIGKILLed
upload leaves nothing behind after the next start.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
#: a temp file younger than this is never swept (its writer may not have taken its lock yet)
STALE_AFTER_S = 60.0
log = logging.getLogger("taskgauge.blobs")


class TempLock:
    """An exclusive ``flock`` on a temp file, held while its writer lives (:func:`sweep_stale` skips it).
    :meth:`release` is idempotent."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def sweep_stale(folder: Path, pattern: str, *, min_age_s: float = STALE_AFTER_S) -> int:
    """Delete the temp files ``folder/pattern`` that no live process holds locked (their writer died) and that
    are older than ``min_age_s``; returns how many were removed."""
    removed = 0
    if not folder.is_dir():
        return 0
    now = time.time()
    for path in folder.glob(pattern):
        try:
            if not path.is_file() or now - path.stat().st_mtime < min_age_s:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            path.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d stale temp file(s) from %s", removed, folder)
    return removed


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
    lock: TempLock | None = None  # keeps sweep_stale off the temp file; released on publish/discard


@dataclass(frozen=True)
class PartFile:
    """A locked, empty temp file inside the store for a writer to fill (then :meth:`BlobStore.stage_file`)."""

    path: Path
    lock: TempLock

    def release(self) -> None:
        self.lock.release()


def _release(lock: TempLock | None) -> None:
    if lock is not None:
        lock.release()


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self._swept = False

    def ensure(self) -> "BlobStore":
        """Create the store; the first call also sweeps the temp files of writers that died (a crash mid-upload)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            sweep_stale(self.tmp, "*.part")
        return self

    def new_part(self) -> PartFile:
        """An empty temp file in the store, locked against the sweep while this process lives."""
        self.ensure()
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="ingest-", suffix=".part")
        os.close(fd)
        try:
            return PartFile(Path(name), TempLock(Path(name)))
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def stage_file(self, part: PartFile) -> StagedBlob:
        """Hash (streaming) and fsync a filled part; it becomes the staged blob (still locked)."""
        h = hashlib.sha256()
        size = 0
        with open(part.path, "rb+") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
                size += len(block)
            os.fsync(fh.fileno())
        return StagedBlob(h.hexdigest(), size, part.path, part.lock)

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
        part = self.new_part()
        try:
            with open(part.path, "wb") as fh:
                fh.write(data)
        except BaseException:
            part.path.unlink(missing_ok=True)
            part.release()
            raise
        return self.stage_file(part)

    def publish(self, staged: StagedBlob) -> bool:
        """Move a staged blob into place; returns True when this call created the blob file."""
        final = self.path(staged.sha256)
        try:
            if final.is_file():
                staged.temp_path.unlink(missing_ok=True)
                return False
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.temp_path, final)
            return True
        finally:
            _release(staged.lock)

    def discard(self, staged: StagedBlob) -> None:
        staged.temp_path.unlink(missing_ok=True)
        _release(staged.lock)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """Every published blob file (tests use this to check that nothing was left behind)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("??/*") if p.is_file())

    def temp_files(self) -> list[Path]:
        """Temp files in the store (tests check that none is left behind)."""
        return sorted(self.tmp.glob("*")) if self.tmp.is_dir() else []
