"""services.datasets with each blob store (filesystem, S3 on a local moto server) and each database (SQLite, and
PostgreSQL when it runs on 127.0.0.1:5432): the blob is published in the dataset row's transaction, a failed
transaction leaves the storage exactly as before, and a blob goes with the last dataset that uses it."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import s3_server
from sqlalchemy import func, select

from taskgauge import db, migrate
from taskgauge.blobs import FileBlobStore, open_blob_store
from taskgauge.context import Context
from taskgauge.datasets.canonical import CanonicalDataset
from taskgauge.services import datasets as service
from taskgauge.settings import Settings

PG_ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"


def _pg_url():
    try:
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=2).close()
    except Exception:  # noqa: BLE001
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not running")
    import psycopg

    name = f"taskgauge_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')

    def drop():
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


@pytest.fixture(params=["sqlite-file", "sqlite-s3", "pg-s3"])
def ctx(request, tmp_path):
    database, store_kind = request.param.split("-")
    drop = None
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'tg.db'}"
    else:
        url, drop = _pg_url()
    if store_kind == "file":
        store = FileBlobStore(tmp_path / "blobs").ensure()

        def contents():
            return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    else:
        endpoint = s3_server.endpoint()
        bucket = s3_server.new_bucket(endpoint)
        store = open_blob_store(
            f"s3://{bucket}/blobs",
            cache_dir=tmp_path / "cache",
            endpoint_url=endpoint,
            region=s3_server.REGION,
            access_key_id=s3_server.ACCESS_KEY,
            secret_access_key=s3_server.SECRET_KEY,
        )

        def contents():
            return sorted(s3_server.objects(bucket, endpoint))

    migrate.upgrade(url)
    engine = db.make_engine(url)
    c = Context(
        settings=Settings(DATA_DIR=tmp_path, DATABASE_URL=url, _env_file=None),
        engine=engine,
        sessions=db.make_session_factory(engine),
        blobs=store,
        enqueue=lambda *_: None,
    )
    c.contents = contents  # type: ignore[attr-defined]
    with c.sessions() as s, s.begin():
        s.add(db.Owner(id="owner-1", name="o"))
    yield c
    engine.dispose()
    if drop:
        drop()


def _data(seed: int) -> CanonicalDataset:
    rng = np.random.default_rng(seed)
    return CanonicalDataset(
        X=rng.normal(size=(40, 6)).astype(np.float32), y=rng.integers(0, 2, 40), classes=["a", "b"], meta={}
    )


def _store(ctx, data, owner="owner-1"):
    return service.store_dataset(ctx, owner, data, name="d", filename="d.npz", sha256="0" * 64, size=1)


def _blob_rows(ctx) -> int:
    with ctx.sessions() as s:
        return s.scalar(select(func.count()).select_from(db.Blob))


def test_store_read_dedupe_and_delete_when_unreferenced(ctx):
    a = _store(ctx, _data(1))
    b = _store(ctx, _data(1))  # same content: the same blob
    c = _store(ctx, _data(2))
    assert a.blob_sha256 == b.blob_sha256 != c.blob_sha256
    assert ctx.blobs.keys() == sorted({a.blob_sha256, c.blob_sha256}) and _blob_rows(ctx) == 2
    assert len(ctx.contents()) == 2  # nothing staged is left behind
    with ctx.sessions() as s:
        loaded = service.load_dataset(ctx.blobs, s.get(db.Dataset, a.id))
    np.testing.assert_array_equal(loaded.X, _data(1).X)
    service.delete_dataset(ctx, "owner-1", a.id)
    assert ctx.blobs.exists(a.blob_sha256)  # b still uses it
    service.delete_dataset(ctx, "owner-1", b.id)
    assert not ctx.blobs.exists(a.blob_sha256) and ctx.blobs.keys() == [c.blob_sha256] and _blob_rows(ctx) == 1
    service.delete_dataset(ctx, "owner-1", c.id)
    assert ctx.blobs.keys() == [] and ctx.contents() == [] and _blob_rows(ctx) == 0


def test_failed_transaction_after_publish_leaves_storage_as_before(ctx):
    """The dataset insert fails (its owner does not exist: a foreign-key violation at commit) after the blob was
    published inside the transaction: the blob and its row go again, the store is exactly as before."""
    keep = _store(ctx, _data(3))
    before = ctx.contents()
    with pytest.raises(Exception, match="(?i)foreign key"):
        _store(ctx, _data(4), owner="no-such-owner")
    assert ctx.contents() == before and ctx.blobs.keys() == [keep.blob_sha256] and _blob_rows(ctx) == 1
    # a failing upload of content that *is* stored leaves the stored blob alone
    with pytest.raises(Exception, match="(?i)foreign key"):
        _store(ctx, _data(3), owner="no-such-owner")
    assert ctx.contents() == before and ctx.blobs.read(keep.blob_sha256)


def test_publish_failure_leaves_nothing(ctx, monkeypatch):
    before = ctx.contents()

    def broken(staged):
        raise OSError("storage went away")

    monkeypatch.setattr(ctx.blobs, "publish", broken)
    with pytest.raises(OSError, match="went away"):
        _store(ctx, _data(5))
    assert ctx.contents() == before and _blob_rows(ctx) == 0
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(db.Dataset)) == 0


def test_uploaded_weights_follow_the_same_blob_discipline(ctx, tmp_path):
    """Weights (taskgauge.services.model_specs.upload_weights) are published with their model spec row, come back
    on a worker as a local file with the same bytes (from the bucket too), a failed transaction leaves the store as
    before, and deleting the last spec that uses the blob deletes it."""
    from estimators.models import build_model
    from estimators.models.pretrained import save_spec_weights
    from taskgauge.services import model_specs
    from taskgauge.weights import WeightsForm

    spec = {"arch": "mlp", "hidden": [4]}
    w = tmp_path / "w.safetensors"
    save_spec_weights(build_model(spec, (6,), 2, seed=0), w)
    form = WeightsForm(spec=spec, input_shape="6")
    before = ctx.contents()

    def upload(owner="owner-1"):
        return model_specs.upload_weights(
            ctx, owner, w, form, name="m", filename="w.safetensors", size=w.stat().st_size
        )

    with pytest.raises(Exception, match="(?i)foreign key"):
        upload(owner="no-such-owner")
    assert ctx.contents() == before and _blob_rows(ctx) == 0
    row = upload()
    assert ctx.blobs.keys() == [row.weights_sha256] and _blob_rows(ctx) == 1
    local = model_specs.runnable(ctx, row)
    assert local.spec == row.spec and open(local.weights, "rb").read() == w.read_bytes()
    model_specs.delete_model_spec(ctx, "owner-1", row.id)
    assert ctx.blobs.keys() == [] and ctx.contents() == before and _blob_rows(ctx) == 0
