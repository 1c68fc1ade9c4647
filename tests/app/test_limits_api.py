"""What a request may ask for, quotas, rate limits and the Low items of issue 15, against the API in-process on the
embedded default (SQLite + the filesystem broker; no worker runs, so analyses stay queued).

Each test asserts the status, the problem document and that nothing was left behind (no row was written)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.main import create_app
from taskgauge import db
from taskgauge.auth import create_key
from taskgauge.migrate import upgrade
from taskgauge.settings import Settings

PROBLEM = "application/problem+json"


PG_ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"


def postgres_up() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=2).close()
        return True
    except Exception:  # noqa: BLE001
        return False


class Api:
    def __init__(self, tmp_path, backend: str = "sqlite", **env):
        self.pg_name = None
        if backend == "postgres":
            import uuid

            import psycopg

            self.pg_name = f"taskgauge_test_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{self.pg_name}"')
            env["DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.pg_name}"
        self.settings = Settings(DATA_DIR=tmp_path / "data", DEVICE="cpu", **env)
        self.settings.DATA_DIR.mkdir(parents=True)
        upgrade(self.settings.DATABASE_URL)
        self.engine = db.make_engine(self.settings.DATABASE_URL)
        self.sessions = db.make_session_factory(self.engine)
        with self.sessions() as s, s.begin():
            _, self.key = create_key(s, "alice")
        self.client = TestClient(
            create_app(self.settings), base_url="http://127.0.0.1:8000", headers={"Authorization": f"Bearer {self.key}"}
        )
        self.client.__enter__()
        rng = np.random.default_rng(0)
        X = rng.normal(size=(120, 6)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64)
        path = tmp_path / "small.npz"
        np.savez(path, X=X, y=y)
        self.dataset = self.upload(path).json()

    def upload(self, path, **fields):
        with open(path, "rb") as fh:
            return self.client.post(
                "/api/v1/datasets", files={"file": (path.name, fh, "application/octet-stream")}, data=fields
            )

    def count(self, model) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(model)))

    def close(self):
        self.client.__exit__(None, None, None)
        self.engine.dispose()
        if self.pg_name:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    if request.param == "postgres" and not postgres_up():
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is needed")
    return request.param


@pytest.fixture
def api(tmp_path):
    made = []

    def make(backend: str = "sqlite", **env):
        a = Api(tmp_path / f"api{len(made)}", backend, **env)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def assert_problem(resp, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    for w in words:
        assert w in body["detail"], (w, body["detail"])
    return body


@pytest.mark.parametrize(
    "estimators, words",
    [
        ({"mle": {"k": 10**400}}, ["k"]),
        ({"mle": {"k": 10_001}}, ["k"]),
        ({"inductive_bias": {"mode": "sampled", "space": "mlp", "mlp_epochs": 1e9}}, ["mlp_epochs"]),
        ({"inductive_bias": {"mode": "sampled", "n_train": 10**7}}, ["n_train"]),
        ({"label_sharpness": {"mode": "paper", "m": 10**9}}, ["m"]),
        ({"twonn": {"decimation_repeats": 10**12}}, ["decimation_repeats"]),
        ({"gride": {"range_max": 10**6}}, ["range_max"]),
        ({"mle": {"seed": 2**70}}, ["seed"]),
        ({"mle": {"anchors": 10**12}}, ["anchors"]),
    ],
    ids=["mle-k-1e400", "mle-k", "mlp-epochs-1e9", "n_train", "ls-m", "decimation", "gride-range", "seed", "anchors"],
)
def test_unbounded_params_are_refused_with_422(api, estimators, words):
    a = api()
    resp = a.client.post("/api/v1/analyses", json={"dataset_id": a.dataset["id"], "estimators": estimators})
    assert_problem(resp, 422, *words)
    assert a.count(db.Analysis) == 0


def test_subspace_epochs_and_sizes_are_bounded(api):
    a = api()
    spec = a.client.post("/api/v1/model-specs", json={"name": "m", "spec": {"arch": "mlp", "hidden": [8]}}).json()
    for params, word in (
        ({"train": {"epochs": 10**6}}, "epochs"),
        ({"d_min": 10**12}, "d_min"),
        ({"max_samples": 10**12}, "max_samples"),
    ):
        resp = a.client.post(
            "/api/v1/analyses",
            json={"dataset_id": a.dataset["id"], "model_spec_id": spec["id"], "estimators": {"subspace": params}},
        )
        assert_problem(resp, 422, word)
    assert a.count(db.Analysis) == 0


def test_huge_model_spec_is_refused_at_post_time_from_its_parameter_count(api, backend):
    a = api(backend)
    # 64 layers of width 65,536: every field is within the spec's bounds, but it has ~2.7e11 parameters.
    spec = a.client.post("/api/v1/model-specs", json={"name": "huge", "spec": {"arch": "mlp", "hidden": [65536] * 64}})
    assert spec.status_code == 201, spec.text
    resp = a.client.post(
        "/api/v1/analyses",
        json={"dataset_id": a.dataset["id"], "model_spec_id": spec.json()["id"], "estimators": {"subspace": {}}},
    )
    body = assert_problem(resp, 422, "parameters", "TASKGAUGE_MAX_MODEL_PARAMS")
    expected = sum(i * o + o for i, o in zip([6] + [65536] * 64, [65536] * 64 + [2]))  # closed form of the MLP
    assert f"{expected:,}" in body["detail"]
    assert a.count(db.Analysis) == 0
    # the same for a schedule (validated as an analysis would be, now)
    resp = a.client.post(
        "/api/v1/schedules",
        json={
            "dataset_id": a.dataset["id"],
            "cron": "0 3 * * *",
            "model_spec_id": spec.json()["id"],
            "estimators": {"subspace": {}},
        },
    )
    assert_problem(resp, 422, "parameters")
    assert a.count(db.Schedule) == 0


def test_model_size_limit_is_a_setting(api):
    a = api(MAX_MODEL_PARAMS=1000)
    spec = a.client.post("/api/v1/model-specs", json={"name": "m", "spec": {"arch": "mlp", "hidden": [200]}}).json()
    resp = a.client.post(
        "/api/v1/analyses",
        json={"dataset_id": a.dataset["id"], "model_spec_id": spec["id"], "estimators": {"subspace": {}}},
    )
    assert_problem(resp, 422, f"{6 * 200 + 200 + 200 * 2 + 2:,} parameters", "1,000")
    small = a.client.post("/api/v1/model-specs", json={"name": "s", "spec": {"arch": "mlp", "hidden": [4]}}).json()
    resp = a.client.post(
        "/api/v1/analyses",
        json={"dataset_id": a.dataset["id"], "model_spec_id": small["id"], "estimators": {"subspace": {}}},
    )
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize(
    "env, asked, stored",
    [
        ({}, 10**6, 1024),  # no operator setting: clamped to the estimator's own default
        ({}, 64, 64),  # lowering is always allowed
        ({"MEMORY_BUDGET_MB": 256}, 10**6, 256),  # the operator's TASKGAUGE_MEMORY_BUDGET_MB
        ({"MEMORY_BUDGET_MB": 4096}, 3000, 3000),
    ],
)
def test_memory_budget_is_clamped_to_the_operators_limit(api, env, asked, stored):
    a = api(**env)
    resp = a.client.post(
        "/api/v1/analyses", json={"dataset_id": a.dataset["id"], "estimators": {"mle": {"memory_budget_mb": asked}}}
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["estimators"]["mle"]["memory_budget_mb"] == stored


def test_per_owner_active_analyses_quota_429(api, backend):
    a = api(backend, MAX_ACTIVE_ANALYSES_PER_OWNER=2)
    body = {"dataset_id": a.dataset["id"], "estimators": {"mle": {}}}
    assert [a.client.post("/api/v1/analyses", json=body).status_code for _ in range(2)] == [202, 202]
    resp = a.client.post("/api/v1/analyses", json=body)
    problem = assert_problem(resp, 429, "TASKGAUGE_MAX_ACTIVE_ANALYSES_PER_OWNER")
    assert int(resp.headers["Retry-After"]) > 0 and problem["active"] == 2 and problem["limit"] == 2
    assert a.count(db.Analysis) == 2
    # a cancelled one frees its slot
    first = a.client.get("/api/v1/analyses").json()["items"][0]["id"]
    assert a.client.post(f"/api/v1/analyses/{first}/cancel").status_code == 200
    assert a.client.post("/api/v1/analyses", json=body).status_code == 202


def test_per_owner_storage_quota_429(api, tmp_path):
    a = api(MAX_STORAGE_MB_PER_OWNER=1, MAX_UPLOAD_MB=2)
    rng = np.random.default_rng(1)
    path = tmp_path / "big.npy"
    np.save(path, rng.normal(size=(1000, 70)).astype(np.float32))  # 280 KB
    size = path.stat().st_size
    fits = (2**20 - a.dataset["size_bytes"]) // size  # uploads that still fit in 1 MB after the fixture's small one
    codes = [a.upload(path, name=f"b{i}").status_code for i in range(fits)]
    assert codes == [201] * fits, codes
    resp = a.upload(path, name="over")
    assert_problem(resp, 429, "TASKGAUGE_MAX_STORAGE_MB_PER_OWNER")
    assert int(resp.headers["Retry-After"]) > 0
    assert a.count(db.Dataset) == 1 + fits
    d = a.settings.DATA_DIR
    assert not [p for p in d.rglob("*") if p.is_file() and {"tmp", ".tmp"} & set(p.relative_to(d).parts)]


@pytest.mark.parametrize(
    "cron, words",
    [
        ("* * * * * *", ["TASKGAUGE_MIN_SCHEDULE_INTERVAL_S"]),  # every second
        ("0,1 3 * * *", ["fires every 60 s"]),  # twice a minute apart, once a day: the smallest gap counts
        ("0 0 30 2 *", ["never fires"]),
        ("0 0 31 4 *", ["never fires"]),
        ("0 " * 60 + "*", ["too long"]),
    ],
)
def test_bad_schedules_are_422_not_500(api, backend, cron, words):
    a = api(backend, MIN_SCHEDULE_INTERVAL_S=120)
    resp = a.client.post("/api/v1/schedules", json={"dataset_id": a.dataset["id"], "cron": cron})
    assert_problem(resp, 422, *words)
    assert a.count(db.Schedule) == 0


def test_a_schedule_at_the_minimum_interval_is_accepted(api):
    a = api(MIN_SCHEDULE_INTERVAL_S=300)
    resp = a.client.post("/api/v1/schedules", json={"dataset_id": a.dataset["id"], "cron": "*/5 * * * *"})
    assert resp.status_code == 201, resp.text


def test_nul_characters_are_422_on_every_backend(api, backend, tmp_path):
    a = api(backend)
    resp = a.client.post("/api/v1/model-specs", json={"name": "a\x00b", "spec": {"arch": "mlp"}})
    assert_problem(resp, 422, "NUL")
    resp = a.client.post(
        "/api/v1/analyses", json={"dataset_id": a.dataset["id"], "estimators": {"mle": {"pooling": "m\x00g"}}}
    )
    assert_problem(resp, 422, "NUL")
    path = tmp_path / "n.npz"
    np.savez(path, X=np.ones((50, 3), np.float32))
    assert_problem(a.upload(path, name="x\x00y"), 422, "NUL")
    assert (a.count(db.ModelSpec), a.count(db.Analysis), a.count(db.Dataset)) == (0, 0, 1)


@pytest.mark.parametrize("route", ["/api/v1/datasets", "/api/v1/analyses"])
def test_huge_offset_is_422_not_500(api, backend, route):
    a = api(backend)
    resp = a.client.get(route, params={"offset": "99999999999999999999"})
    assert_problem(resp, 422, "offset")
    assert a.client.get(route, params={"offset": 10**9}).json()["items"] == []


def test_post_rate_limit_429_with_retry_after(api):
    a = api(RATE_LIMIT_POST="4/minute")  # the upload in the fixture is the first POST
    body = {"name": "m", "spec": {"arch": "mlp"}}
    codes = [a.client.post("/api/v1/model-specs", json=body).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429]
    resp = a.client.post("/api/v1/model-specs", json=body)
    assert_problem(resp, 429, "TASKGAUGE_RATE_LIMIT_POST")
    assert 0 < int(resp.headers["Retry-After"]) <= 60
    assert a.count(db.ModelSpec) == 3
    assert a.client.get("/api/v1/model-specs").status_code == 200  # reads are not limited


def test_sqlite_write_lock_timeout_is_503_with_retry_after_and_reads_go_on(api):
    a = api(SQLITE_BUSY_TIMEOUT_S=0.5)
    other = sqlite3.connect(str(a.settings.DATA_DIR / "taskgauge.db"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        other.execute("UPDATE owners SET name = name")
        resp = a.client.post("/api/v1/model-specs", json={"name": "m", "spec": {"arch": "mlp"}})
        assert_problem(resp, 503, "retry")
        assert int(resp.headers["Retry-After"]) > 0
        # reads are deferred transactions: they do not wait for the writer
        assert a.client.get("/api/v1/datasets").status_code == 200
        assert a.client.get(f"/api/v1/datasets/{a.dataset['id']}").status_code == 200
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert a.count(db.ModelSpec) == 0
    assert a.client.post("/api/v1/model-specs", json={"name": "m", "spec": {"arch": "mlp"}}).status_code == 201


def test_nul_in_a_path_id_is_not_a_500(api, backend):
    a = api(backend)
    resp = a.client.get("/api/v1/datasets/a%00b")
    assert resp.status_code in (404, 422), resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
