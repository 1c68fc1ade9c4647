"""The database: typed SQLAlchemy 2 ORM models and engine/session helpers, shared by the API and the workers.

Why here: the workers need the models (they read analyses and write results and reports) and the import
direction is ``app`` → ``workers`` → ``estimators``, so the models live in ``workers`` where both can import
them and ``workers`` never imports ``app``. Nothing connects at import time: :func:`make_engine` builds an
engine when the API's lifespan or a worker process asks for one.

The schema comes only from the Alembic migrations under ``migrations/`` (``taskgauge db upgrade``); the
models here must match them, which ``alembic check`` (run by the integration tests) enforces.

Conventions: a ``MetaData`` naming convention so constraint names are stable;
string UUID primary keys; timezone-aware UTC timestamps (also on SQLite, via :class:`UTCDateTime`);
relationships are not used for loading (``lazy="raise"`` where they exist) — code builds ``select()``
statements; helpers only flush, the request or task owns the one commit.

>>> engine = make_engine("sqlite://")
>>> engine.dialect.name
'sqlite'
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Analysis states (docs/deployment.md).
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
ANALYSIS_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
#: a shard no longer needed: a speculative trial of a subspace sweep that the sweep's path turned away from
#: (workers.fanout_subspace). Stopped, never used; it counts as finished for its analysis.
DROPPED = "dropped"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime (taskgauge.db.utcnow())")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSON documents: jsonb on PostgreSQL (reports spell non-finite numbers as strings, so jsonb accepts them).
JSONDoc = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class IdMixin:
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)


class CreatedMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class Owner(IdMixin, CreatedMixin, Base):
    """Whoever holds API keys; every dataset, spec, analysis, report and schedule belongs to one owner."""

    __tablename__ = "owners"
    name: Mapped[str] = mapped_column(String(200), nullable=False)


class ApiKey(IdMixin, CreatedMixin, Base):
    """An API key, stored as ``prefix`` (public, for lookup) and the SHA-256 of the secret part."""

    __tablename__ = "api_keys"
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    prefix: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class Blob(CreatedMixin, Base):
    """A content-addressed file under ``DATA_DIR/blobs`` (the canonical ``.npz`` of one or more datasets)."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Dataset(IdMixin, CreatedMixin, Base):
    __tablename__ = "datasets"
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(300), nullable=False)
    filename: Mapped[str] = mapped_column(String(300), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)  # of the uploaded file
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)  # of the uploaded file
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), nullable=False, index=True)
    n_samples: Mapped[int] = mapped_column(Integer, nullable=False)
    shape: Mapped[list[int]] = mapped_column(JSONDoc, nullable=False)
    n_classes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    classes: Mapped[list[str] | None] = mapped_column(JSONDoc, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False, default=dict)


class ModelSpec(IdMixin, CreatedMixin, Base):
    """A validated model spec; with uploaded weights (issue 16, :mod:`taskgauge.weights`) also the blob that holds
    them (``weights_sha256``, published in the row's transaction), their form (``safetensors`` for an arch spec,
    ``hf-zip`` for a Hugging Face-style directory), the uploaded file's size (it counts towards the storage quota)
    and what the upload check found (``weights_meta``: file name, tensor shapes, input shape, classes, …)."""

    __tablename__ = "model_specs"
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(300), nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    weights_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"), nullable=True, index=True)
    weights_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    weights_size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    weights_meta: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)


class Analysis(IdMixin, CreatedMixin, Base):
    """One requested analysis; its lifecycle lives here (the UI reads this table, never the result backend).

    ``lease_token``/``heartbeat_at`` make the task idempotent: a worker claims the row by writing its token, keeps
    ``heartbeat_at`` fresh while it runs, and only the token holder may write progress or finish it. A row left
    ``running`` with a stale heartbeat (its worker died) is re-queued by a sweeper (``workers.tasks``).
    """

    __tablename__ = "analyses"
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), nullable=False, index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True)
    model_spec_id: Mapped[str | None] = mapped_column(ForeignKey("model_specs.id", ondelete="SET NULL"), nullable=True)
    schedule_id: Mapped[str | None] = mapped_column(ForeignKey("schedules.id", ondelete="SET NULL"), nullable=True)
    estimators: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    device: Mapped[str] = mapped_column(String(16), nullable=False, default="auto")
    queue: Mapped[str] = mapped_column(String(64), nullable=False, default="default")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=QUEUED, index=True)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    stage: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)
    report_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)


class AnalysisResult(IdMixin, CreatedMixin, Base):
    """One estimator's result entry (report schema ``results[name]``); unique per analysis and estimator."""

    __tablename__ = "analysis_results"
    __table_args__ = (UniqueConstraint("analysis_id", "estimator"),)
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), nullable=False)
    estimator: Mapped[str] = mapped_column(String(100), nullable=False)
    version: Mapped[str] = mapped_column(String(50), nullable=False)
    entry: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)


class AnalysisShard(IdMixin, CreatedMixin, Base):
    """One task of a fanned-out analysis (docs/deployment.md, "Fan-out"), keyed by ``(analysis_id, key)``:
    ``est:NAME`` runs one estimator (its result goes to ``analysis_results``); ``sub:TRIAL`` one trial group of a
    subspace sweep (its record, small JSON, in ``result``); ``knn:plan`` and ``knn:I/M`` plan and compute part I of
    M of a split kNN (``workers.fanout_knn``; the result is the blob ``blob_sha256``, released when the analysis
    ends). Claimed and heart-beaten like an analysis (``lease_token``/``heartbeat_at``); ``worker``/``device``/
    ``seconds`` are listed in the report. ``queue``: where it is sent (``NULL``: the analysis' queue); ``weight``:
    its share of one estimator in the analysis' progress."""

    __tablename__ = "analysis_shards"
    __table_args__ = (
        UniqueConstraint("analysis_id", "key"),
        Index("ix_analysis_shards_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_analysis_shards_blob_sha256", "blob_sha256"),
    )
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), nullable=False)
    key: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=QUEUED)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    queue: Mapped[str | None] = mapped_column(String(32), nullable=True)
    weight: Mapped[float] = mapped_column(Float, nullable=False, default=1.0, server_default="1")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc, nullable=True)
    blob_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Report(CreatedMixin, Base):
    """The finished report document (docs/methods.md §0); ``id`` is the document's ``report_id``."""

    __tablename__ = "reports"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), nullable=False, index=True)
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), nullable=False, unique=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)


class Schedule(IdMixin, CreatedMixin, Base):
    """Scheduled re-analysis of a dataset (cron expression in an IANA time zone)."""

    __tablename__ = "schedules"
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), nullable=False, index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True)
    model_spec_id: Mapped[str | None] = mapped_column(ForeignKey("model_specs.id", ondelete="SET NULL"), nullable=True)
    estimators: Mapped[dict[str, Any]] = mapped_column(JSONDoc, nullable=False)
    cron: Mapped[str] = mapped_column(String(100), nullable=False)
    timezone: Mapped[str] = mapped_column(String(64), nullable=False, default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WorkerHeartbeat(Base):
    """A live Celery worker, as it reports itself (``workers.presence``): one row per worker node, refreshed every
    ``HEARTBEAT_S`` and deleted on a clean shutdown; a row older than ``LEASE_S`` is a worker that is gone.
    Written by the workers themselves, so it works on every broker (the embedded one has no broadcast)."""

    __tablename__ = "worker_heartbeats"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery node name, taskgauge-…@host
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    queues: Mapped[list[str]] = mapped_column(JSONDoc, nullable=False)
    concurrency: Mapped[int] = mapped_column(Integer, nullable=False)
    device: Mapped[str] = mapped_column(String(255), nullable=False)
    version: Mapped[str] = mapped_column(String(50), nullable=False)
    active: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc, nullable=False)  # tasks running now
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)


Index("ix_analyses_status_heartbeat", Analysis.status, Analysis.heartbeat_at)
Index("ix_schedules_due", Schedule.enabled, Schedule.next_run_at)


# ------------------------------------------------------------------------------------------ engines


_SQLITE_WRITE = "taskgauge_sqlite_write"  # execution option: this connection's transaction will write
_WRITE_LOCK_HELD = "taskgauge_write_lock_held"  # connection-record info: it holds the process-level write lock


class _WriteLock:
    """One process-level lock per SQLite database file: writers of this process queue on it (FIFO-ish, in Python)
    instead of spinning in SQLite's busy handler; other processes still serialise on SQLite's own write lock."""

    _locks: dict[str, threading.Lock] = {}
    _guard = threading.Lock()

    @classmethod
    def of(cls, url: str) -> threading.Lock:
        with cls._guard:
            return cls._locks.setdefault(url, threading.Lock())


def make_engine(url: str, *, busy_timeout_s: float = 10.0, **kwargs: Any) -> Engine:
    """An engine for ``url``.

    SQLite gets WAL, a busy timeout, foreign keys and this transaction discipline: a session that only reads
    (autobegin) runs in a *deferred* transaction, so reads never wait for writers (WAL snapshots); a session opened
    with ``session.begin()`` (every writer in taskgauge, see :class:`WriteSession`) takes ``BEGIN IMMEDIATE`` at
    once, after the process-level write lock, so writers queue instead of failing with "database is locked" on a
    read→write upgrade. A writer that waits longer than ``busy_timeout_s`` gets ``OperationalError`` ("database is
    locked"), which the API answers with 503 + Retry-After.
    """
    if url.startswith("sqlite"):
        kwargs.setdefault("pool_size", 32)  # cheap: every API thread (app.main.API_THREADS) may hold one
        kwargs.setdefault("max_overflow", 96)
        kwargs.setdefault("pool_timeout", busy_timeout_s)
        memory = ":memory:" in url or url in ("sqlite://", "sqlite:///")
        if memory:
            for k in ("pool_size", "max_overflow", "pool_timeout"):
                kwargs.pop(k, None)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s}, **kwargs)
        write_lock = threading.Lock() if memory else _WriteLock.of(url)  # in-memory databases are per engine

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (pysqlite's implicit BEGIN is deferred)
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        engine.taskgauge_write_lock = write_lock  # type: ignore[attr-defined]  # WriteSession takes it first
        engine.taskgauge_busy_timeout_s = busy_timeout_s  # type: ignore[attr-defined]

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            options = conn.get_execution_options()
            if not options.get(_SQLITE_WRITE):
                conn.exec_driver_sql("BEGIN")  # deferred: a read snapshot, never waits
                return
            handed = options.get(_LOCK_HANDOVER)
            if handed is not None and handed["held"]:
                handed["held"] = False  # the lock WriteSession.begin() took now belongs to this connection
            elif not write_lock.acquire(timeout=busy_timeout_s):
                raise _locked()
            conn.info[_WRITE_LOCK_HELD] = True
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                _release(conn.info)
                raise

        def _release(info: dict) -> None:
            if info.pop(_WRITE_LOCK_HELD, False):
                write_lock.release()

        # The events fire before the DBAPI's commit/rollback; a writer ends its transaction here itself, so the
        # lock is released after the write is durable (pysqlite's commit()/rollback() are then no-ops).
        @event.listens_for(engine, "commit")
        def _sqlite_commit(conn: Any) -> None:
            if conn.info.get(_WRITE_LOCK_HELD):
                try:
                    conn.connection.dbapi_connection.commit()
                finally:
                    _release(conn.info)

        @event.listens_for(engine, "rollback")
        def _sqlite_rollback(conn: Any) -> None:
            if conn.info.get(_WRITE_LOCK_HELD):
                try:
                    conn.connection.dbapi_connection.rollback()
                finally:
                    _release(conn.info)

        @event.listens_for(engine.pool, "reset")
        def _sqlite_reset(_dbapi_conn: Any, record: Any, _reset_state: Any) -> None:
            _release(record.info)

        @event.listens_for(engine.pool, "checkin")
        def _sqlite_checkin(_dbapi_conn: Any, record: Any) -> None:
            _release(record.info)

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _locked() -> OperationalError:
    return OperationalError(
        "BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked (waited for this process's other writers)")
    )


_LOCK_HANDOVER = "taskgauge_lock_handover"


class WriteSession(Session):
    """A session whose explicit ``begin()`` (``with factory() as s, s.begin():``, every writer in taskgauge) marks its
    transaction as a writing one: on SQLite it starts with ``BEGIN IMMEDIATE`` (:func:`make_engine`); sessions
    that autobegin (reads) stay deferred. Elsewhere it is a plain :class:`~sqlalchemy.orm.Session`."""

    def begin(self, nested: bool = False) -> Any:
        tx = super().begin(nested=nested)
        bind = self.bind
        if not nested and bind is not None and bind.dialect.name == "sqlite":
            # Take the process's write lock *before* a pooled connection: writers waiting for their turn must not
            # hold connections that readers need (with 60 waiting writers the pool would run dry).
            lock = getattr(bind, "taskgauge_write_lock", None)
            handed = {"held": False}
            if lock is not None:
                if not lock.acquire(timeout=getattr(bind, "taskgauge_busy_timeout_s", 10.0)):
                    raise _locked()
                handed["held"] = True
            try:
                self.connection(execution_options={_SQLITE_WRITE: True, _LOCK_HANDOVER: handed})
            finally:
                if handed["held"] and lock is not None:  # no connection took it over (pool timeout, failed BEGIN)
                    lock.release()
        return tx


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, class_=WriteSession, expire_on_commit=False)


def _insert(dialect_name: str) -> Any:
    """The dialect's ``insert`` (PostgreSQL's or SQLite's: both have ``on_conflict_do_*``)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


def insert_ignore(table: Any, dialect_name: str, values: dict[str, Any], conflict: list[str]) -> Any:
    """``INSERT … ON CONFLICT (conflict) DO NOTHING`` for PostgreSQL and SQLite."""
    return _insert(dialect_name)(table).values(**values).on_conflict_do_nothing(index_elements=conflict)


def upsert_touch(table: Any, dialect_name: str, values: dict[str, Any], conflict: list[str], touch: str) -> Any:
    """``INSERT … ON CONFLICT (conflict) DO UPDATE SET touch = excluded.touch``: inserts or row-locks."""
    stmt = _insert(dialect_name)(table).values(**values)
    return stmt.on_conflict_do_update(index_elements=conflict, set_={touch: getattr(stmt.excluded, touch)})
