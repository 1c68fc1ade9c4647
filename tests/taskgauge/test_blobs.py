"""taskgauge.blobs: the one interface on both stores (filesystem, S3 on a local moto server), and the factory."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
import s3_server

from taskgauge.blobs import FileBlobStore, S3BlobStore, blob_store_for, deterministic_npz, open_blob_store
from taskgauge.settings import Settings


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    """A fresh, empty store of each kind, and a function listing *everything* it holds (not via the store)."""
    if request.param == "file":
        st = FileBlobStore(tmp_path / "blobs").ensure()

        def everything() -> list[str]:
            return sorted(str(p.relative_to(st.root)) for p in st.root.rglob("*") if p.is_file())
    else:
        url = s3_server.endpoint()
        bucket = s3_server.new_bucket(url)
        st = open_blob_store(
            f"s3://{bucket}/some/prefix",
            cache_dir=tmp_path / "cache",
            endpoint_url=url,
            region=s3_server.REGION,
            access_key_id=s3_server.ACCESS_KEY,
            secret_access_key=s3_server.SECRET_KEY,
        )

        def everything() -> list[str]:
            return sorted(s3_server.objects(bucket, url))

    st.everything = everything  # type: ignore[attr-defined]
    return st


def _payload(seed: int) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, X=np.random.default_rng(seed).normal(size=(50, 7)).astype(np.float32))
    return deterministic_npz(buf.getvalue())


def test_stage_publish_read_delete(store):
    data = _payload(1)
    staged = store.stage(data)
    assert staged.sha256 == hashlib.sha256(data).hexdigest() and staged.size == len(data)
    # staged is not published: nothing visible under the name; on S3 nothing in the bucket at all
    assert not store.exists(staged.sha256) and store.keys() == []
    if isinstance(store, S3BlobStore):
        assert store.everything() == []
    assert store.publish(staged) is True
    assert store.exists(staged.sha256) and store.keys() == [staged.sha256]
    assert store.read(staged.sha256) == data
    store.discard(staged)  # harmless after publish
    assert store.read(staged.sha256) == data
    assert len(store.everything()) == 1 and store.everything()[0].endswith(f"{staged.sha256[:2]}/{staged.sha256}")
    store.delete(staged.sha256)
    assert not store.exists(staged.sha256) and store.keys() == [] and store.everything() == []
    store.delete(staged.sha256)  # deleting an absent blob is not an error
    with pytest.raises(FileNotFoundError):
        store.read(staged.sha256)


def test_publish_is_idempotent_and_content_addressed(store):
    a, b = _payload(2), _payload(3)
    first, again, other = store.stage(a), store.stage(a), store.stage(b)
    assert first.sha256 == again.sha256 != other.sha256
    assert store.publish(first) is True
    assert store.publish(again) is False  # the same bytes are stored once
    assert store.publish(other) is True
    assert store.keys() == sorted([first.sha256, other.sha256])
    assert len(store.everything()) == 2 and store.temp_files() == []  # no temp files or objects left over
    assert store.read(first.sha256) == a and store.read(other.sha256) == b


def test_discard_leaves_nothing(store):
    before = store.everything()
    staged = store.stage(_payload(4))
    store.discard(staged)
    assert store.everything() == before and store.keys() == [] and not store.exists(staged.sha256)
    assert store.temp_files() == []
    with pytest.raises(FileNotFoundError):
        store.read(staged.sha256)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "AB" * 32, "a" * 63, "g" * 64])
def test_names_must_be_sha256_digests(store, bad):
    for op in (store.read, store.exists, store.delete):
        with pytest.raises(ValueError, match="sha256"):
            op(bad)


def test_factory_from_settings(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.upper().startswith("TASKGAUGE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    s = Settings(DATA_DIR=tmp_path / "d")
    st = blob_store_for(s)  # the embedded default: the filesystem under DATA_DIR
    assert isinstance(st, FileBlobStore) and st.root == tmp_path / "d" / "blobs" and st.tmp.is_dir()
    assert s.blob_url == (tmp_path / "d" / "blobs").as_uri()
    s = Settings(
        DATA_DIR=tmp_path / "d",
        BLOB_URL="s3://bucket-x/a/b/",
        S3_ENDPOINT_URL="http://127.0.0.1:9",
        S3_ACCESS_KEY_ID="k",
        S3_SECRET_ACCESS_KEY="secret",
    )
    st = blob_store_for(s)  # connects to nothing until used
    assert isinstance(st, S3BlobStore) and (st.bucket, st.prefix) == ("bucket-x", "a/b")
    assert st.key("ab" + "c" * 62) == "a/b/ab/ab" + "c" * 62
    assert "secret" not in repr(s)
    st = blob_store_for(Settings(DATA_DIR=tmp_path / "d", BLOB_URL=f"file://{tmp_path / 'elsewhere'}"))
    assert isinstance(st, FileBlobStore) and st.root == tmp_path / "elsewhere"
    for bad in ("s3://", "gs://bucket/x", "file://host/dir", "relative/dir"):
        with pytest.raises(ValueError):
            Settings(DATA_DIR=tmp_path / "d", BLOB_URL=bad)


def test_check_says_whether_the_store_can_be_used(store, tmp_path):
    store.check()  # a usable store
    if isinstance(store, S3BlobStore):
        missing = open_blob_store(
            "s3://no-such-bucket-tg/x",
            cache_dir=tmp_path / "cache2",
            endpoint_url=store._client_kw["endpoint_url"],
            region=s3_server.REGION,
            access_key_id=s3_server.ACCESS_KEY,
            secret_access_key=s3_server.SECRET_KEY,
        )
        with pytest.raises(Exception, match="(?i)404|not found|NoSuchBucket"):
            missing.check()
    else:
        with pytest.raises(OSError, match="missing or not writable"):
            FileBlobStore(tmp_path / "never-made").check()


def test_s3_another_host_reads_through_its_own_verified_cache(tmp_path):
    """Two hosts (two caches) on one bucket: the second fetches the blob once, checks it against its name, and a
    damaged object is refused rather than read."""
    url = s3_server.endpoint()
    bucket = s3_server.new_bucket(url)

    def host(name):
        return open_blob_store(
            f"s3://{bucket}/p",
            cache_dir=tmp_path / name,
            endpoint_url=url,
            region=s3_server.REGION,
            access_key_id=s3_server.ACCESS_KEY,
            secret_access_key=s3_server.SECRET_KEY,
        ).ensure()

    a, b = host("a"), host("b")
    data = _payload(7)
    staged = a.stage(data)
    assert a.publish(staged) is True and a.temp_files() == []
    assert not b.cached(staged.sha256).exists()
    path = b.path(staged.sha256)
    assert path == b.cached(staged.sha256) and path.read_bytes() == data and b.read(staged.sha256) == data
    assert b.temp_files() == []
    a.delete(staged.sha256)  # gone from the bucket and from a's cache; b's copy is of the same content
    assert not a.cached(staged.sha256).exists() and not a.exists(staged.sha256)
    with pytest.raises(FileNotFoundError):
        a.path(staged.sha256)
    bad = hashlib.sha256(b"something else").hexdigest()
    s3_server.client(url).put_object(Bucket=bucket, Key=a.key(bad), Body=data)  # wrong bytes under that name
    with pytest.raises(OSError, match="corrupt"):
        b.path(bad)
    assert not b.cached(bad).exists() and b.temp_files() == []


def test_shard_blob_bytes_are_savez_with_fixed_timestamps():
    """``npz_bytes`` writes in one pass what ``np.savez`` and the timestamp-fixing rewrite give (the same arrays, the
    same blob, as before); views are written as their values; object arrays are refused (never pickled)."""
    from taskgauge.services.shard_blobs import npz_bytes

    rng = np.random.default_rng(0)
    arrays = {
        "n": np.asarray(7, np.int64),
        "coords": rng.random((50, 3)).astype(np.float32),
        "labels": rng.integers(0, 5, 50).astype(np.int32),
        "empty": np.zeros((0, 4)),
        "strided": rng.random((6, 4))[:, ::2],
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    assert npz_bytes(arrays) == deterministic_npz(buf.getvalue())
    with np.load(io.BytesIO(npz_bytes(arrays)), allow_pickle=False) as z:
        assert all(np.array_equal(z[name], a) and z[name].dtype == a.dtype for name, a in arrays.items())
    with pytest.raises(ValueError, match="plain values"):
        npz_bytes({"o": np.array([1, "a"], dtype=object)})
