"""taskgauge.settings: embedded defaults, TASKGAUGE_* overrides, .env file, validation, caching."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from taskgauge.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.upper().startswith("TASKGAUGE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_embedded_defaults(tmp_path):
    s = Settings()
    assert s.DATA_DIR == (tmp_path / ".taskgauge").resolve()
    assert s.DATA_DIR.is_absolute()
    assert s.DATABASE_URL == f"sqlite:///{(tmp_path / '.taskgauge' / 'taskgauge.db').resolve()}"
    assert s.is_sqlite
    assert s.BROKER_URL == "" and s.embedded_broker
    assert s.RESULT_BACKEND == "" and s.embedded_result_backend
    assert s.DEVICE == "auto"
    assert s.MAX_UPLOAD_MB == 512 and s.max_upload_bytes == 512 * 1024 * 1024
    assert s.MEMORY_BUDGET_MB == 1024


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("TASKGAUGE_DATA_DIR", str(tmp_path / "blobs"))
    monkeypatch.setenv("TASKGAUGE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/tg")
    monkeypatch.setenv("TASKGAUGE_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("TASKGAUGE_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
    monkeypatch.setenv("TASKGAUGE_MAX_UPLOAD_MB", "64")
    monkeypatch.setenv("TASKGAUGE_DEVICE", " CUDA ")
    monkeypatch.setenv("taskgauge_memory_budget_mb", "256")  # case-insensitive
    s = Settings()
    assert s.DATA_DIR == tmp_path / "blobs"
    assert s.DATABASE_URL == "postgresql+psycopg://postgres@127.0.0.1:5432/tg" and not s.is_sqlite
    assert not s.embedded_broker and not s.embedded_result_backend
    assert s.MAX_UPLOAD_MB == 64 and s.DEVICE == "cuda" and s.MEMORY_BUDGET_MB == 256


def test_data_dir_moves_the_default_database(monkeypatch, tmp_path):
    monkeypatch.setenv("TASKGAUGE_DATA_DIR", "rel/dir")
    s = Settings()
    assert s.DATA_DIR == tmp_path / "rel" / "dir"
    assert s.DATABASE_URL == f"sqlite:///{tmp_path / 'rel' / 'dir' / 'taskgauge.db'}"


def test_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("TASKGAUGE_MAX_UPLOAD_MB=7\nTASKGAUGE_DEVICE=cpu\nOTHER_APP_SETTING=1\n")
    s = Settings()
    assert s.MAX_UPLOAD_MB == 7 and s.DEVICE == "cpu"


@pytest.mark.parametrize(
    ("key", "value"),
    [("TASKGAUGE_DEVICE", "gpu"), ("TASKGAUGE_MAX_UPLOAD_MB", "0"), ("TASKGAUGE_MEMORY_BUDGET_MB", "lots")],
)
def test_invalid_values_are_rejected(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert key.removeprefix("TASKGAUGE_") in str(info.value)


def test_get_settings_is_cached_until_cleared(monkeypatch):
    first = get_settings()
    assert get_settings() is first
    monkeypatch.setenv("TASKGAUGE_MAX_UPLOAD_MB", "3")
    assert get_settings().MAX_UPLOAD_MB == 512
    get_settings.cache_clear()
    assert get_settings().MAX_UPLOAD_MB == 3


def test_worker_threads_default_is_the_childs_share_of_the_cores(monkeypatch):
    import os

    from taskgauge.settings import Settings

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    s = Settings()
    assert (s.worker_threads(1), s.worker_threads(4), s.worker_threads(32)) == (16, 4, 1)
    assert Settings(WORKER_THREADS=3).worker_threads(4) == 3  # an explicit setting wins


def test_admin_owners(monkeypatch):
    assert Settings().admin_owners == {"local"}  # the embedded broker: the local key's owner is the admin
    monkeypatch.setenv("TASKGAUGE_BROKER_URL", "redis://127.0.0.1:6379/0")
    assert Settings().admin_owners == frozenset()  # production: nobody unless named
    monkeypatch.setenv("TASKGAUGE_ADMIN_OWNERS", " ops, alice ,,")
    assert Settings().admin_owners == {"ops", "alice"}


def test_blob_url_default_and_s3(monkeypatch, tmp_path):
    assert Settings().blob_url == (tmp_path / ".taskgauge" / "blobs").resolve().as_uri()
    monkeypatch.setenv("TASKGAUGE_BLOB_URL", "s3://tg/blobs")
    monkeypatch.setenv("TASKGAUGE_S3_SECRET_ACCESS_KEY", "hush")
    s = Settings()
    assert s.blob_url == "s3://tg/blobs" and s.S3_SECRET_ACCESS_KEY.get_secret_value() == "hush"
    assert "hush" not in repr(s) and "hush" not in str(s.model_dump())
    monkeypatch.setenv("TASKGAUGE_BLOB_URL", "ftp://x/y")
    with pytest.raises(ValidationError, match="BLOB_URL"):
        Settings()
