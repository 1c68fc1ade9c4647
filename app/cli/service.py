"""Service commands of the ``taskgauge`` CLI: ``serve``, ``worker``, ``beat``, ``db upgrade|check``,
``keys create``. Registered into ``app.cli`` by :func:`register`.

Embedded default (no ``TASKGAUGE_BROKER_URL``): ``taskgauge serve`` migrates the SQLite database under
``DATA_DIR`` (default ``./.taskgauge``), writes the local API key to ``DATA_DIR/local_api_key`` on first start,
starts one Celery worker child process (with embedded beat; restarted by ``app.supervisor`` if it dies) over the serverless filesystem transport
(``DATA_DIR/broker``) and serves the API with uvicorn. Production: ``taskgauge db upgrade`` once, then
``taskgauge serve``, any number of ``taskgauge worker`` and one ``taskgauge beat``, all with
``TASKGAUGE_DATABASE_URL`` (PostgreSQL) and ``TASKGAUGE_BROKER_URL`` (Redis).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from typing import Annotated, Optional

import typer

EMBEDDED_WORKER_ENV = "TASKGAUGE_EMBEDDED_WORKER"


def _settings():
    from pydantic import ValidationError

    from taskgauge.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"TASKGAUGE_{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        typer.echo(f"taskgauge: error: bad setting: {problems}", err=True)
        raise typer.Exit(2) from None


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the embedded worker gets SIGTERM when `taskgauge serve` dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    worker: Annotated[
        Optional[bool],
        typer.Option("--worker/--no-worker", help="Start an embedded worker child. Default: only when "
                     "TASKGAUGE_BROKER_URL is empty (the embedded default)."),
    ] = None,
    migrate: Annotated[
        Optional[bool],
        typer.Option("--migrate/--no-migrate", help="Run the migrations first. Default: only for SQLite."),
    ] = None,
) -> None:
    """Serve the API and dashboard (http://HOST:PORT/, OpenAPI at /docs).

    With no settings this is the whole embedded service: SQLite + blobs under ./.taskgauge, a worker child
    process over a serverless transport, and a local API key in ./.taskgauge/local_api_key that the CLI finds.

    Examples:

      taskgauge serve

      taskgauge serve --host 0.0.0.0 --port 8080

      TASKGAUGE_DATABASE_URL=postgresql+psycopg://tg@db/tg TASKGAUGE_BROKER_URL=redis://redis:6379/0 taskgauge serve
    """
    import uvicorn

    from taskgauge import migrate as migrations
    from taskgauge.auth import ensure_local_key
    from taskgauge import db

    settings = _settings()
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    if migrate if migrate is not None else settings.is_sqlite:
        migrations.upgrade(settings.DATABASE_URL)
    start_worker = worker if worker is not None else settings.embedded_broker
    if settings.embedded_broker:
        engine = db.make_engine(settings.DATABASE_URL)
        try:
            key_path = ensure_local_key(db.make_session_factory(engine), settings.DATA_DIR)
        finally:
            engine.dispose()
        typer.echo(f"taskgauge: local API key in {key_path} (the CLI and dashboard use it)", err=True)
    supervisor = None
    if start_worker:
        from app.supervisor import WorkerSupervisor

        concurrency = settings.EMBEDDED_CONCURRENCY if settings.embedded_broker else 1
        cmd = [sys.executable, "-m", "app", "worker", "--concurrency", str(concurrency)]
        if settings.embedded_broker:
            cmd.append("--beat")

        def spawn() -> subprocess.Popen:
            # Own process group: a Ctrl-C or a group SIGTERM reaches `serve` alone, which then stops the worker and
            # everything it forked (pool processes, embedded beat) in order, so no child outlives `serve`.
            return subprocess.Popen(cmd, env={**os.environ, EMBEDDED_WORKER_ENV: "1"}, preexec_fn=_pdeathsig,
                                    start_new_session=True)

        settings.broker_dir.mkdir(parents=True, exist_ok=True)
        supervisor = WorkerSupervisor(spawn, settings.broker_dir, on_restart=lambda: _resend_queued(settings))
        child = supervisor.start()
        typer.echo(f"taskgauge: worker process {child.pid} started (restarted if it dies)", err=True)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it with the handler that was installed before
    # it started; this one turns it into SystemExit so that the `finally` below stops the worker.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, log_level="info",
                    timeout_graceful_shutdown=5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if supervisor is not None:
            supervisor.stop()


def _resend_queued(settings) -> None:
    """After an embedded worker restart: send every queued analysis again (workers.leases.requeue_queued)."""
    from taskgauge import db
    from workers.celery_app import configure, enqueue_analysis
    from workers.leases import requeue_queued

    configure(settings)
    engine = db.make_engine(settings.DATABASE_URL)
    try:
        sent = requeue_queued(db.make_session_factory(engine), enqueue_analysis)
    finally:
        engine.dispose()
    if sent:
        typer.echo(f"taskgauge: re-sent {len(sent)} queued analyses to the restarted worker", err=True)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def worker(
    queues: Annotated[
        Optional[str],
        typer.Option("--queues", "-Q", help="Comma-separated queues. Default: 'default', plus 'gpu' when CUDA is "
                     "available (CUDA workers take the gpu queue, CPU workers the default one)."),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Analyses run in parallel.")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
    beat: Annotated[bool, typer.Option("--beat", help="Also run the beat scheduler in this worker (one only!).")] = False,
) -> None:
    """Run a Celery worker that executes analyses (TASKGAUGE_DATABASE_URL, TASKGAUGE_BROKER_URL, TASKGAUGE_DATA_DIR).

    Examples:

      taskgauge worker

      taskgauge worker --queues gpu,default --concurrency 1     (a CUDA host)
    """
    from taskgauge.services.analyses import DEFAULT_QUEUE, GPU_QUEUE
    from workers.celery_app import celery_app, configure

    settings = _settings()
    configure(settings)
    # each pool child sets its torch/BLAS/faiss threads to this (workers.tasks._child_init)
    celery_app.conf.taskgauge_threads = settings.worker_threads(concurrency)
    if not queues:
        import torch

        queues = f"{GPU_QUEUE},{DEFAULT_QUEUE}" if torch.cuda.is_available() and settings.DEVICE != "cpu" else DEFAULT_QUEUE
    argv = ["worker", "-Q", queues, "-c", str(concurrency), "--loglevel", loglevel, "--without-gossip",
            "--without-mingle", "-n", f"taskgauge-{uuid.uuid4().hex[:8]}@%h"]
    if settings.embedded_broker:
        argv.append("--without-heartbeat")
    if beat:
        argv += ["--beat", "--scheduler", "celery.beat:Scheduler"]  # in-memory: due times live in the DB
    celery_app.worker_main(argv)


def beat(
    every: Annotated[Optional[float], typer.Option("--every", min=0.01,
                     help="Seconds between scans for due schedules (default: TASKGAUGE_SCHEDULE_SCAN_SECONDS, 30).")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run Celery beat: it triggers the due-schedule scan that creates scheduled analyses (a worker must run too).

    Which schedules are due lives in the database, so beat keeps no state of its own and a second beat is harmless
    (``workers.beat``).

    Examples:

      TASKGAUGE_BROKER_URL=redis://localhost:6379/0 taskgauge beat

      taskgauge beat --every 10
    """
    from workers.beat import run_beat

    settings = _settings()
    if every is not None:
        settings = settings.model_copy(update={"SCHEDULE_SCAN_SECONDS": every})
    run_beat(settings, loglevel=loglevel)


db_cli = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@db_cli.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply the migrations to TASKGAUGE_DATABASE_URL (or the embedded SQLite).

    Example:

      TASKGAUGE_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/taskgauge taskgauge db upgrade
    """
    from taskgauge import migrate as migrations

    settings = _settings()
    migrations.upgrade(settings.DATABASE_URL, revision)
    typer.echo(f"database at {_redact(settings.DATABASE_URL)} is at revision {revision}", err=True)


@db_cli.command("check")
def db_check() -> None:
    """Fail (exit 1) when the ORM models and the migrations differ (CI's drift detection)."""
    from alembic.util.exc import CommandError

    from taskgauge import migrate as migrations

    try:
        migrations.check(_settings().DATABASE_URL)
    except CommandError as exc:
        typer.echo(f"taskgauge: error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("models and migrations agree", err=True)


keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key (e.g. who or what uses it).")],
    owner: Annotated[Optional[str], typer.Option(help="Add the key to this existing owner (default: a new owner "
                                                 "named NAME, or the one of that name).")] = None,
) -> None:
    """Create an API key and print it on stdout — once; only its hash is stored.

    Example:

      export TASKGAUGE_API_KEY=$(taskgauge keys create alice)
    """
    from taskgauge.auth import create_key
    from taskgauge import db

    settings = _settings()
    engine = db.make_engine(settings.DATABASE_URL)
    try:
        with db.make_session_factory(engine)() as s, s.begin():
            row, key = create_key(s, name, owner_name=owner)
    finally:
        engine.dispose()
    typer.echo(key)
    typer.echo(f"created key {row.prefix} '{name}'; store it now, it is not shown again", err=True)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparsable URL)"


def register(cli: typer.Typer) -> None:
    cli.command("serve")(serve)
    cli.command("worker")(worker)
    cli.command("beat")(beat)
    cli.add_typer(db_cli, name="db")
    cli.add_typer(keys_cli, name="keys")
