"""Service commands of the ``taskgauge`` CLI: ``serve``, ``worker``, ``beat``, ``db upgrade|check``,
``keys create|list|revoke|signin-url``. Registered into ``app.cli`` by :func:`register`.

Embedded default (no ``TASKGAUGE_BROKER_URL``): ``taskgauge serve`` migrates the SQLite database under
``DATA_DIR`` (default ``./.taskgauge``), writes the local API key to ``DATA_DIR/local_api_key`` on first start,
makes DATA_DIR 0700 and its database and key files 0600, prints a one-time dashboard sign-in link, starts one
Celery worker child process (with embedded beat; restarted by ``app.supervisor`` if it dies) over the serverless
filesystem transport (``DATA_DIR/broker``) and serves the API with uvicorn. Production: ``taskgauge db upgrade`` once, then
``taskgauge serve``, any number of ``taskgauge worker`` and one ``taskgauge beat``, all with
``TASKGAUGE_DATABASE_URL`` (PostgreSQL) and ``TASKGAUGE_BROKER_URL`` (Redis).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from typing import Annotated

import typer


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
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            help="Start an embedded worker child. Default: only when "
            "TASKGAUGE_BROKER_URL is empty (the embedded default).",
        ),
    ] = None,
    migrate: Annotated[
        bool | None,
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

    from taskgauge import db
    from taskgauge import migrate as migrations
    from taskgauge.auth import ensure_local_key

    settings = _settings()
    if settings.embedded:
        os.umask(0o077)  # everything serve and its worker create under DATA_DIR: this user only
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
        typer.echo(f"taskgauge: local API key in {key_path} (the CLI uses it)", err=True)
    if settings.embedded:
        private_data_dir(settings.DATA_DIR)
        _print_signin_url(settings, host, port)
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
            return subprocess.Popen(
                cmd, env={**os.environ, "TASKGAUGE_EMBEDDED_WORKER": "1"}, preexec_fn=_pdeathsig, start_new_session=True
            )

        settings.broker_dir.mkdir(parents=True, exist_ok=True)
        supervisor = WorkerSupervisor(spawn, settings.broker_dir, on_restart=lambda: _resend_queued(settings))
        child = supervisor.start()
        typer.echo(f"taskgauge: worker process {child.pid} started (restarted if it dies)", err=True)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it with the handler that was installed before
    # it started; this one turns it into SystemExit so that the `finally` below stops the worker.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        # Embedded: no proxy header (X-Forwarded-For, Forwarded) rewrites who the client is.
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            log_level="info",
            timeout_graceful_shutdown=5,
            proxy_headers=not settings.embedded,
        )
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


def private_data_dir(data_dir) -> None:
    """The embedded default's files are this user's alone: DATA_DIR 0700; the SQLite files (``taskgauge.db``,
    ``-wal``, ``-shm``, ``-journal``), the local key and the sign-in token 0600. (SQLite gives the ``-wal``/``-shm``
    files it creates later the database file's mode.)"""
    from pathlib import Path

    from taskgauge.auth import LOCAL_KEY_FILENAME, SIGNIN_TOKEN_FILENAME

    data_dir = Path(data_dir)
    try:
        os.chmod(data_dir, 0o700)
        for path in [*data_dir.glob("taskgauge.db*"), data_dir / LOCAL_KEY_FILENAME, data_dir / SIGNIN_TOKEN_FILENAME]:
            if path.is_file() and not path.is_symlink():
                os.chmod(path, 0o600)
    except OSError as exc:  # not ours to change (another owner, a read-only mount): say so, and go on
        typer.echo(
            f"taskgauge: warning: cannot make {data_dir} private ({exc}); other local users may read it", err=True
        )


def signin_url(host: str, port: int, token: str) -> str:
    """The one-time dashboard sign-in link; the token sits in the fragment (never sent to the server's log)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/signin#token={token}"


def _print_signin_url(settings, host: str, port: int) -> None:
    from taskgauge.auth import issue_signin_token

    token = issue_signin_token(settings.DATA_DIR)
    minutes = round(settings.SIGNIN_TOKEN_TTL_S / 60)
    typer.echo(
        f"taskgauge: open the dashboard with this one-time link (valid once, for {minutes} min):\n"
        f"    {signin_url(host, port, token)}",
        err=True,
    )


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            help="Comma-separated queues. Default: 'default', plus 'gpu' when CUDA is "
            "available (CUDA workers take the gpu queue, CPU workers the default one).",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Analyses run in parallel.")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
    beat: Annotated[
        bool, typer.Option("--beat", help="Also run the beat scheduler in this worker (one only!).")
    ] = False,
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

        queues = (
            f"{GPU_QUEUE},{DEFAULT_QUEUE}" if torch.cuda.is_available() and settings.DEVICE != "cpu" else DEFAULT_QUEUE
        )
    argv = [
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "-n",
        f"taskgauge-{uuid.uuid4().hex[:8]}@%h",
    ]
    if settings.embedded_broker:
        argv.append("--without-heartbeat")
    if beat:
        argv += ["--beat", "--scheduler", "celery.beat:Scheduler"]  # in-memory: due times live in the DB
    celery_app.worker_main(argv)


def beat(
    every: Annotated[
        float | None,
        typer.Option(
            "--every",
            min=0.01,
            help="Seconds between scans for due schedules (default: TASKGAUGE_SCHEDULE_SCAN_SECONDS, 30).",
        ),
    ] = None,
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
    owner: Annotated[
        str | None,
        typer.Option(
            help="Add the key to this existing owner (default: a new owner named NAME, or the one of that name)."
        ),
    ] = None,
) -> None:
    """Create an API key and print it on stdout — once; only its hash is stored.

    Example:

      export TASKGAUGE_API_KEY=$(taskgauge keys create alice)
    """
    from taskgauge import db
    from taskgauge.auth import create_key

    settings = _settings()
    engine = db.make_engine(settings.DATABASE_URL)
    try:
        with db.make_session_factory(engine)() as s, s.begin():
            row, key = create_key(s, name, owner_name=owner)
    finally:
        engine.dispose()
    typer.echo(key)
    typer.echo(f"created key {row.prefix} '{name}'; store it now, it is not shown again", err=True)


@keys_cli.command("list")
def keys_list() -> None:
    """List the API keys (id, public prefix, name, owner, created, revoked); never a secret.

    Example:

      taskgauge keys list
    """
    from rich.console import Console
    from rich.table import Table

    from taskgauge import db
    from taskgauge.auth import list_keys

    settings = _settings()
    engine = db.make_engine(settings.DATABASE_URL)
    try:
        with db.make_session_factory(engine)() as s:
            keys = list_keys(s)
    finally:
        engine.dispose()
    table = Table("id", "prefix", "name", "owner", "created", "status", box=None, pad_edge=False)
    for k in keys:
        table.add_row(k.id, k.prefix, k.name, k.owner, k.created_at, "revoked" if k.revoked else "active")
    Console(width=200).print(table)


@keys_cli.command("revoke")
def keys_revoke(
    key: Annotated[
        str, typer.Argument(metavar="KEY_ID|PREFIX", help="The key's id or its prefix (`keys list`), or the whole key.")
    ],
) -> None:
    """Revoke an API key: from now on it gets 401. Final; make a new key with `keys create`.

    Example:

      taskgauge keys revoke 0123456789ab
    """
    from app.cli.common import fail
    from taskgauge import db
    from taskgauge.auth import revoke_key

    settings = _settings()
    engine = db.make_engine(settings.DATABASE_URL)
    try:
        with db.make_session_factory(engine)() as s, s.begin():
            row = revoke_key(s, key)
            found = None if row is None else (row.prefix, row.name)
    finally:
        engine.dispose()
    if found is None:
        fail(f"no API key with id or prefix {key[:80]!r}; see `taskgauge keys list`")
    typer.echo(f"revoked key {found[0]} '{found[1]}'", err=True)


@keys_cli.command("signin-url")
def keys_signin_url(
    host: Annotated[str, typer.Option(help="Host the server is reached at.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Its port.")] = 8000,
) -> None:
    """Print a new one-time dashboard sign-in link for the embedded server using this DATA_DIR (the previous link
    stops working). Open it in the browser; it signs that browser in once.

    Example:

      taskgauge keys signin-url --port 8765
    """
    from app.cli.common import fail
    from taskgauge.auth import issue_signin_token

    settings = _settings()
    if not settings.embedded:
        fail(
            "sign-in links exist only in the embedded default (SQLite, no broker); paste an API key "
            "(`taskgauge keys create NAME`) into the sign-in page instead"
        )
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    typer.echo(signin_url(host, port, issue_signin_token(settings.DATA_DIR)))


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
