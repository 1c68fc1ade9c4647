"""Content-addressed blob store: one interface, two implementations (docs/deployment.md).

A blob's name is the SHA-256 of its bytes (``ab/abcdef…``). Blobs are the canonical ``.npz`` files, written
deterministically (:func:`taskgauge.datasets.canonical.write_canonical`: fixed timestamps, no file name inside), so
the same data always gives the same bytes, which is what makes "the same data uploaded twice is stored once" hold.
:func:`deterministic_npz` turns any ``.npz`` into that form (older callers).

Where blobs live is ``TASKGAUGE_BLOB_URL`` (:func:`blob_store_for`):

* ``file://DIR`` (default ``DATA_DIR/blobs``): :class:`FileBlobStore`, files ``DIR/ab/abcdef…``;
* ``s3://BUCKET/PREFIX``: :class:`S3BlobStore`, objects ``PREFIX/ab/abcdef…`` in any S3-compatible store (AWS S3,
  MinIO, …; ``TASKGAUGE_S3_ENDPOINT_URL`` and credentials), so workers on any host read the same blobs. Readers
  get a local file (:meth:`BlobStore.path`): a verified copy kept in ``DATA_DIR/blob-cache``.

Writing is two-phase so the API can make the dataset row and the blob appear together: :meth:`BlobStore.new_part`
gives a temp file in the store's local staging folder that a writer (the ingest subprocess) fills,
:meth:`BlobStore.stage_file` hashes it (fsync'd), :meth:`BlobStore.publish` makes it visible under its name (a
rename, or an upload to the bucket; a no-op when the blob exists) inside the transaction, and the caller deletes
the blob again if its transaction fails and no row references it. :meth:`BlobStore.stage` does the same for bytes
already in memory. Nothing reaches a bucket before :meth:`BlobStore.publish`.

Temp files are held under an exclusive ``flock`` while their writer lives; :func:`sweep_stale` (run by
:meth:`BlobStore.ensure` at startup, and by the API for its upload folder) removes the ones whose writer died — a
SIGKILLed upload leaves nothing behind after the next start.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import logging
import os
import tempfile
import threading
import time
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from taskgauge.settings import Settings

#: the timestamp of every entry of a zip taskgauge writes (the same content gives the same bytes)
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
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
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
            fixed.compress_type = zipfile.ZIP_STORED
            fixed.external_attr = 0o600 << 16
            dst.writestr(fixed, src.read(info))
    return out.getvalue()


@dataclass(frozen=True)
class StagedBlob:
    """A hashed temp file in the store's local staging folder, ready to publish."""

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


_HEX = frozenset("0123456789abcdef")


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is a lower-case SHA-256 hex digest; ValueError otherwise (no path or key injection)."""
    if len(sha256) != 64 or not set(sha256) <= _HEX:
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


class BlobStore(ABC):
    """The interface the services and workers use. Staging is local and shared (``self.tmp``); what publishing,
    reading and deleting do is each store's own."""

    url: str
    #: the local staging folder: parts being written, staged blobs
    tmp: Path

    def __init__(self) -> None:
        self._swept = False

    def ensure(self) -> BlobStore:
        """Create the local folders; the first call also sweeps the temp files of writers that died. Connects to
        nothing."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            sweep_stale(self.tmp, "*.part")
        return self

    def new_part(self) -> PartFile:
        """An empty temp file in the staging folder, locked against the sweep while this process lives."""
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

    def stage(self, data: bytes) -> StagedBlob:
        """Write ``data`` to a staged temp file."""
        part = self.new_part()
        try:
            with open(part.path, "wb") as fh:
                fh.write(data)
        except BaseException:
            part.path.unlink(missing_ok=True)
            part.release()
            raise
        return self.stage_file(part)

    def discard(self, staged: StagedBlob) -> None:
        """Drop a staged blob (harmless after :meth:`publish`)."""
        staged.temp_path.unlink(missing_ok=True)
        _release(staged.lock)

    def temp_files(self) -> list[Path]:
        """Temp files in the staging folder (tests check that none is left behind)."""
        return sorted(self.tmp.glob("*")) if self.tmp.is_dir() else []

    @abstractmethod
    def publish(self, staged: StagedBlob) -> bool:
        """Make a staged blob visible under its SHA-256; True when this call created it (False: it existed)."""

    @abstractmethod
    def path(self, sha256: str) -> Path:
        """A local file with the blob's bytes (for S3 a verified copy in the local cache, fetched if missing)."""

    @abstractmethod
    def read(self, sha256: str) -> bytes: ...

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove a published blob (no error when it is absent)."""

    @abstractmethod
    def keys(self) -> list[str]:
        """The SHA-256 of every published blob, sorted (tests check that nothing was left behind)."""

    @abstractmethod
    def check(self) -> None:
        """Raise when the store cannot be used now (``/readyz``): folder missing or not writable, bucket unreachable."""


class FileBlobStore(BlobStore):
    """Blobs as files ``root/ab/abcdef…``; staged in ``root/.tmp`` (same filesystem, so publishing is a rename)."""

    def __init__(self, root: str | Path) -> None:
        super().__init__()
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.url = self.root.resolve().as_uri()

    def ensure(self) -> FileBlobStore:
        super().ensure()
        return self

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

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

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """Every published blob file."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("??/*") if p.is_file())

    def keys(self) -> list[str]:
        return [p.name for p in self.files()]

    def check(self) -> None:
        if not os.access(self.tmp, os.W_OK):
            raise OSError(f"blob folder {self.tmp} is missing or not writable")


class S3BlobStore(BlobStore):
    """Blobs as objects ``prefix/ab/abcdef…`` in an S3-compatible bucket (boto3), read through a local cache.

    Parts are written and staged in ``cache_dir/.tmp`` on this host, so nothing reaches the bucket before
    :meth:`publish`, which uploads the staged file (boto3's managed transfer: multipart for large blobs, aborted on
    failure) unless the object exists, with the SHA-256 as its S3 checksum (stores that check it, such as AWS S3
    and MinIO, refuse bytes that arrived damaged). :meth:`path` gives a local copy: ``cache_dir/ab/abcdef…``,
    downloaded once per host and checked against its name (content addressed, so a cached copy is never stale);
    :meth:`delete` removes the object and this host's copy. The client is made on first use, once per process
    (clients must not cross a fork).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        cache_dir: str | Path,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        super().__init__()
        if not bucket:
            raise ValueError("an s3:// blob URL needs a bucket: s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.cache = Path(cache_dir)
        self.tmp = self.cache / ".tmp"
        self._client_kw = {
            "endpoint_url": endpoint_url or None,
            "region_name": region or None,
            "aws_access_key_id": access_key_id or None,
            "aws_secret_access_key": secret_access_key or None,
        }
        self._client: Any = None
        self._client_pid: int | None = None
        self._lock = threading.Lock()

    def ensure(self) -> S3BlobStore:
        super().ensure()
        return self

    @property
    def client(self) -> Any:
        if self._client is None or self._client_pid != os.getpid():
            with self._lock:
                if self._client is None or self._client_pid != os.getpid():
                    import boto3
                    from botocore.config import Config

                    style = "path" if self._client_kw["endpoint_url"] else "auto"  # MinIO & co. serve path style
                    config = Config(
                        s3={"addressing_style": style},
                        retries={"max_attempts": 5, "mode": "standard"},
                        connect_timeout=10,
                        read_timeout=120,
                    )
                    self._client = boto3.session.Session().client("s3", config=config, **self._client_kw)
                    self._client_pid = os.getpid()
        return self._client

    def key(self, sha256: str) -> str:
        check_sha256(sha256)
        name = f"{sha256[:2]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def cached(self, sha256: str) -> Path:
        """Where this host keeps its copy of the blob (whether or not it has one)."""
        check_sha256(sha256)
        return self.cache / sha256[:2] / sha256

    @staticmethod
    def _missing(exc: Exception) -> bool:
        err = getattr(exc, "response", {}).get("Error", {})
        return str(err.get("Code")) in {"404", "NoSuchKey", "NotFound"}

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
            return True
        except ClientError as exc:
            if self._missing(exc):
                return False
            raise

    def path(self, sha256: str) -> Path:
        from botocore.exceptions import ClientError

        final = self.cached(sha256)
        if final.is_file():
            return final
        part = self.new_part()
        try:
            try:
                self.client.download_file(self.bucket, self.key(sha256), str(part.path))
            except ClientError as exc:
                if self._missing(exc):
                    raise FileNotFoundError(f"blob {sha256} is not in {self.url}") from None
                raise
            if _hash_file(part.path)[0] != sha256:
                raise OSError(f"blob {sha256} in {self.url} is corrupt (its bytes hash differently)")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part.path, final)
            return final
        finally:
            part.path.unlink(missing_ok=True)
            part.release()

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def publish(self, staged: StagedBlob) -> bool:
        try:
            if self.exists(staged.sha256):
                staged.temp_path.unlink(missing_ok=True)
                return False
            checksum = base64.b64encode(bytes.fromhex(staged.sha256)).decode()
            self.client.upload_file(
                str(staged.temp_path),
                self.bucket,
                self.key(staged.sha256),
                ExtraArgs={"ContentType": "application/octet-stream", "ChecksumSHA256": checksum},
            )
            final = self.cached(staged.sha256)  # this host now has a verified copy: keep it
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.temp_path, final)
            return True
        finally:
            _release(staged.lock)

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        self.cached(sha256).unlink(missing_ok=True)

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def keys(self) -> list[str]:
        out: list[str] = []
        start = f"{self.prefix}/" if self.prefix else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(start) :]
                head, _, name = rest.partition("/")
                if len(head) == 2 and name.startswith(head) and len(name) == 64 and set(name) <= _HEX:
                    out.append(name)
        return sorted(out)


def open_blob_store(
    url: str,
    *,
    cache_dir: str | Path | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> BlobStore:
    """The store for ``url``: ``file:///abs/dir`` (or a plain path) or ``s3://bucket[/prefix]`` (with a local
    ``cache_dir``, default ``./.taskgauge/blob-cache``).

    >>> open_blob_store("file:///tmp/tg-doc-blobs").root
    PosixPath('/tmp/tg-doc-blobs')
    >>> store = open_blob_store("s3://tg-bucket/blobs/"); (store.bucket, store.prefix, store.url)
    ('tg-bucket', 'blobs', 's3://tg-bucket/blobs')
    """
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3BlobStore(
            parsed.netloc,
            parsed.path,
            cache_dir=cache_dir or Path(".taskgauge") / "blob-cache",
            endpoint_url=endpoint_url,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"a file:// blob URL names a local folder (file:///abs/dir), not a host: {url!r}")
        return FileBlobStore(Path(parsed.path))
    if parsed.scheme == "":
        return FileBlobStore(Path(url))
    raise ValueError(f"unsupported blob URL {url!r}: use file:///DIR or s3://BUCKET/PREFIX")


def blob_store_for(settings: Settings) -> BlobStore:
    """The blob store the settings name (``BLOB_URL`` + the ``S3_*`` settings; S3's local cache in
    ``DATA_DIR/blob-cache``), folders created."""
    return open_blob_store(
        settings.blob_url,
        cache_dir=settings.DATA_DIR / "blob-cache",
        endpoint_url=settings.S3_ENDPOINT_URL,
        region=settings.S3_REGION,
        access_key_id=settings.S3_ACCESS_KEY_ID,
        secret_access_key=settings.S3_SECRET_ACCESS_KEY.get_secret_value(),
    ).ensure()
