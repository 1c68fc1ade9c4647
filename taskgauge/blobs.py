"""Content-addressed blob store: one interface, two implementations (docs/deployment.md).

A blob's name is the SHA-256 of its bytes (``ab/abcdef…``). Blobs are the canonical ``.npz`` files;
:func:`deterministic_npz` rewrites the zip entries with a fixed timestamp so that the same canonical dataset
always gives the same bytes (``numpy.savez`` stamps the current time into the zip), which is what makes
"the same file uploaded twice is stored once" hold.

Where blobs live is ``TASKGAUGE_BLOB_URL`` (:func:`open_blob_store`):

* ``file://DIR`` (default ``DATA_DIR/blobs``): :class:`FileBlobStore`, files ``DIR/ab/abcdef…``;
* ``s3://BUCKET/PREFIX``: :class:`S3BlobStore`, objects ``PREFIX/ab/abcdef…`` in any S3-compatible store (AWS S3,
  MinIO, …; ``TASKGAUGE_S3_ENDPOINT_URL`` and credentials), so workers on any host read the same blobs.

Writing is two-phase so the service can make the dataset row and the blob appear together
(:func:`taskgauge.services.datasets.store_dataset`): :meth:`BlobStore.stage` prepares the bytes without making
them visible (a temp file next to the store; for S3 the bytes stay in memory, so a crash leaves nothing in the
bucket), :meth:`BlobStore.publish` makes the blob visible under its name inside the transaction (a rename, or a
PUT; a no-op when it exists), :meth:`BlobStore.discard` drops a staged blob, and the caller deletes the blob again
if its transaction fails and no row references it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from taskgauge.settings import Settings

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_HEX = frozenset("0123456789abcdef")


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


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is a lower-case SHA-256 hex digest; ValueError otherwise (no path or key injection)."""
    if len(sha256) != 64 or not set(sha256) <= _HEX:
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


@dataclass(frozen=True)
class StagedBlob:
    """Bytes ready to publish: a temp file (filesystem) or the bytes themselves (S3)."""

    sha256: str
    size: int
    temp_path: Path | None = None
    data: bytes | None = field(default=None, repr=False)


class BlobStore(ABC):
    """The interface the services and workers use; :func:`open_blob_store` picks the implementation."""

    url: str

    def ensure(self) -> BlobStore:
        """Prepare the store for use (create folders); returns self. Connects to nothing."""
        return self

    @abstractmethod
    def stage(self, data: bytes) -> StagedBlob:
        """Prepare ``data`` for :meth:`publish` without making it visible under its name."""

    @abstractmethod
    def publish(self, staged: StagedBlob) -> bool:
        """Make a staged blob visible under its SHA-256; True when this call created it (False: it existed)."""

    @abstractmethod
    def discard(self, staged: StagedBlob) -> None:
        """Drop what :meth:`stage` prepared (harmless after :meth:`publish`)."""

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
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.url = self.root.resolve().as_uri()

    def ensure(self) -> FileBlobStore:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def stage(self, data: bytes) -> StagedBlob:
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
        return StagedBlob(digest, len(data), temp_path=Path(name))

    def publish(self, staged: StagedBlob) -> bool:
        assert staged.temp_path is not None, "not staged by a FileBlobStore"
        final = self.path(staged.sha256)
        if final.is_file():
            staged.temp_path.unlink(missing_ok=True)
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.temp_path, final)
        return True

    def discard(self, staged: StagedBlob) -> None:
        if staged.temp_path is not None:
            staged.temp_path.unlink(missing_ok=True)

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
    """Blobs as objects ``prefix/ab/abcdef…`` in an S3-compatible bucket (boto3).

    Staging keeps the bytes in memory (the service already holds them), so nothing reaches the bucket before
    :meth:`publish`, which PUTs the object (boto3's managed transfer: multipart for large blobs, aborted on
    failure) unless it exists. Each PUT carries the SHA-256 as an S3 checksum (stores that check it, such as AWS S3
    and MinIO, refuse bytes that arrived damaged), and :meth:`read` hashes what it got back. The client is made on
    first use, once per process (clients must not cross a fork).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("an s3:// blob URL needs a bucket: s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client_kw = {
            "endpoint_url": endpoint_url or None,
            "region_name": region or None,
            "aws_access_key_id": access_key_id or None,
            "aws_secret_access_key": secret_access_key or None,
        }
        self._client = client
        self._client_pid = os.getpid() if client is not None else None
        self._lock = threading.Lock()

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

    def read(self, sha256: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if self._missing(exc):
                raise FileNotFoundError(f"blob {sha256} is not in {self.url}") from None
            raise
        data = resp["Body"].read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise OSError(f"blob {sha256} in {self.url} is corrupt (its bytes hash differently)")
        return data

    def stage(self, data: bytes) -> StagedBlob:
        return StagedBlob(hashlib.sha256(data).hexdigest(), len(data), data=data)

    def publish(self, staged: StagedBlob) -> bool:
        assert staged.data is not None, "not staged by an S3BlobStore"
        if self.exists(staged.sha256):
            return False
        import base64

        checksum = base64.b64encode(bytes.fromhex(staged.sha256)).decode()
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key(staged.sha256),
            Body=staged.data,
            ContentType="application/octet-stream",
            ChecksumSHA256=checksum,
        )
        return True

    def discard(self, staged: StagedBlob) -> None:
        """Nothing reached the bucket before :meth:`publish`; the bytes are freed with the staged object."""

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))

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
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> BlobStore:
    """The store for ``url``: ``file:///abs/dir`` (or a plain path) or ``s3://bucket[/prefix]``.

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
    """The blob store the settings name (``BLOB_URL`` + the ``S3_*`` settings), folders created."""
    return open_blob_store(
        settings.blob_url,
        endpoint_url=settings.S3_ENDPOINT_URL,
        region=settings.S3_REGION,
        access_key_id=settings.S3_ACCESS_KEY_ID,
        secret_access_key=settings.S3_SECRET_ACCESS_KEY.get_secret_value(),
    ).ensure()
