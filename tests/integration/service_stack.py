"""Start the service for integration tests: a real API process (``taskgauge serve --no-worker``) and a real
Celery worker process (``taskgauge worker``), on either

* ``pg-redis``: a fresh PostgreSQL database ``taskgauge_test_<random>`` built by ``alembic upgrade head`` and a
  private ``redis-server`` on a free loopback port (so a test can restart it), or
* ``pg-redis-s3``: the same, with the blob store in a fresh bucket of a local S3-compatible server (moto on
  loopback, ``tests/s3_server.py``) instead of ``DATA_DIR/blobs``, or
* ``embedded``: SQLite + the serverless filesystem transport under a temp ``DATA_DIR`` (the embedded default).

Every process is started in its own session and killed (and the database dropped) on teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PG_ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_up() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=2).close()
        return True
    except Exception:  # noqa: BLE001
        return False


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    kill_groups([proc], sig, timeout)


def kill_groups(procs: list[subprocess.Popen | None], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Send ``sig`` to every process group first, then wait for them (SIGKILL past ``timeout``): the processes
    shut down side by side instead of one after the other."""
    live = []
    for proc in procs:
        if proc is None or proc.poll() is not None:
            continue
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            continue
        live.append(proc)
    deadline = time.monotonic() + timeout
    for proc in live:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@dataclass
class Redis:
    port: int
    dir: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=(self.dir / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import redis

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Stack:
    kind: str
    tmp: Path
    env: dict[str, str]
    database_url: str
    api_url: str = ""
    api: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    redis: Redis | None = None
    pg_name: str | None = None
    n_workers: int = 0
    logs: list[Path] = field(default_factory=list)
    s3_bucket: str | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)  # every process spawned, for stop()

    @property
    def data_dir(self) -> Path:
        return Path(self.env["TASKGAUGE_DATA_DIR"])

    def blob_store(self):
        """The stack's blob store, built from its settings as the service builds it."""
        from taskgauge.blobs import blob_store_for
        from taskgauge.settings import Settings

        settings = {k.removeprefix("TASKGAUGE_"): v for k, v in self.env.items() if k.startswith("TASKGAUGE_")}
        return blob_store_for(Settings(_env_file=None, **settings))

    def blob_storage_contents(self) -> dict[str, str]:
        """Everything in the blob storage, read without taskgauge's code: every file under ``DATA_DIR/blobs``
        (staging folder included) with its size, or every object in the stack's bucket with its ETag."""
        if self.s3_bucket:
            import s3_server

            return s3_server.objects(self.s3_bucket, self.env["TASKGAUGE_S3_ENDPOINT_URL"])
        root = self.data_dir / "blobs"
        return {str(p.relative_to(root)): str(p.stat().st_size) for p in root.rglob("*") if p.is_file()}

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        path = self.tmp / log
        self.logs.append(path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            env=self.env,
            cwd=self.tmp,
            stdout=path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_api(self, wait: bool = True) -> None:
        port = free_port()
        self.api = self._spawn(
            ["serve", "--no-worker", "--no-migrate", "--host", "127.0.0.1", "--port", str(port)], "api.log"
        )
        self.api_url = f"http://127.0.0.1:{port}"
        if wait:
            self.wait_api()

    def wait_api(self) -> None:
        """Wait until the API process started by ``start_api(wait=False)`` answers ``/healthz``."""
        assert self.api is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError("API exited:\n" + self.tail())
            try:
                if httpx.get(self.api_url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("API did not start:\n" + self.tail())

    def start(self, workers: int, keys: tuple[str, ...] = ()) -> list[subprocess.Popen]:
        """Start the API and ``workers`` worker processes side by side, create a key for each owner in ``keys``
        (``stack.<owner>_key``) while they start, and wait until all are ready. Returns the worker processes."""
        self.start_api(wait=False)
        procs = [self.start_worker(wait=False) for _ in range(workers)]
        for owner in keys:
            setattr(self, f"{owner}_key", self.create_key(owner))
        self.wait_api()
        self.wait_workers(procs)
        return procs

    def start_worker(self, wait: bool = True) -> subprocess.Popen:
        self.n_workers += 1
        self.worker = self._spawn(["worker", "--concurrency", "1", "--loglevel", "info"], f"worker{self.n_workers}.log")
        if wait:
            self.wait_workers([self.worker])
        return self.worker

    def start_workers(self, n: int) -> list[subprocess.Popen]:
        """Start ``n`` workers at once (not one after the other) and wait until all are ready."""
        return self.wait_workers([self.start_worker(wait=False) for _ in range(n)])

    def wait_workers(self, procs: list[subprocess.Popen]) -> list[subprocess.Popen]:
        """Wait until every worker in ``procs`` (started with ``start_worker(wait=False)``) is ready."""
        logs = [self.logs[self.procs.index(p)] for p in procs]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(log.exists() and b" ready." in log.read_bytes() for log in logs):
                return procs
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a worker exited:\n" + self.tail())
            time.sleep(0.2)
        raise RuntimeError("workers did not become ready:\n" + self.tail())

    def create_key(self, owner: str) -> str:
        """A new API key for ``owner`` (``taskgauge keys create``)."""
        out = subprocess.run(
            [sys.executable, "-m", "app", "keys", "create", owner],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return out.stdout.strip()

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group (main process and pool children) — no chance to clean up."""
        if self.worker is not None:
            kill_group(self.worker, signal.SIGKILL)

    def tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}" for p in self.logs if p.exists())

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.api_url + "/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def stop(self) -> None:
        kill_groups(self.procs)  # the API and every worker ever started, side by side
        if self.redis is not None:
            self.redis.stop()
        if self.pg_name:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


@contextmanager
def running(kind: str, tmp: Path, *, extra_env: dict[str, str] | None = None, workers: int = 2) -> Iterator[Stack]:
    """A started stack of ``kind``: the API, ``workers`` worker processes (``stack.workers``) and a key for alice
    (``stack.alice_key``); skips without PostgreSQL and redis-server; stopped (logs printed on failure) on exit."""
    import pytest

    if kind != "embedded" and not (postgres_up() and redis_available()):
        pytest.skip("PostgreSQL and redis-server are needed for this stack")
    stack = build(kind, tmp, extra_env=extra_env)
    try:
        stack.workers = stack.start(workers, keys=("alice",))
        yield stack
    except BaseException:
        print(stack.tail(), file=sys.stderr)
        raise
    finally:
        stack.stop()


def build(kind: str, tmp: Path, *, extra_env: dict[str, str] | None = None) -> Stack:
    """Create the database and broker of ``kind`` and migrate; the caller starts the API and worker."""
    from taskgauge import migrate

    data_dir = tmp / "data"
    data_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGAUGE_")}
    env.update(
        {
            "TASKGAUGE_DATA_DIR": str(data_dir),
            "TASKGAUGE_DEVICE": "cpu",
            "TASKGAUGE_MAX_UPLOAD_MB": "1",
            "TASKGAUGE_LEASE_S": "6",
            "TASKGAUGE_HEARTBEAT_S": "1",
            "TASKGAUGE_VISIBILITY_TIMEOUT_S": "30",
            "TASKGAUGE_ADMIN_OWNERS": "root",  # `keys create root` makes an admin key (GET /workers)
            # the test-only estimators come in as a plugin (entry point), from this folder on the path
            "PYTHONPATH": os.pathsep.join(
                [str(HERE / "plugins"), str(HERE), str(ROOT), env.get("PYTHONPATH", "")]
            ).rstrip(os.pathsep),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            **(extra_env or {}),
        }
    )
    stack: Stack
    bucket = None
    if kind == "pg-redis-s3":
        import s3_server

        bucket = s3_server.new_bucket()
        env.update(s3_server.settings_env(bucket))
    if kind in ("pg-redis", "pg-redis-s3"):
        import psycopg

        name = f"taskgauge_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        (tmp / "redis").mkdir()
        redis = Redis(port=free_port(), dir=tmp / "redis")
        env["TASKGAUGE_DATABASE_URL"] = url
        env["TASKGAUGE_BROKER_URL"] = f"redis://127.0.0.1:{redis.port}/0"
        stack = Stack(kind, tmp, env, url, redis=redis, pg_name=name, s3_bucket=bucket)
        try:
            redis.start()
            migrate.upgrade(url)
        except BaseException:
            stack.stop()
            raise
    elif kind == "embedded":
        url = f"sqlite:///{data_dir / 'taskgauge.db'}"
        stack = Stack(kind, tmp, env, url)
        migrate.upgrade(url)
    else:
        raise ValueError(kind)
    return stack


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def wait_for(client, analysis_id: str, timeout: float = 90.0, until=("succeeded", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    state = {}
    while time.monotonic() < deadline:
        state = client.get(f"/analyses/{analysis_id}").json()
        if state["status"] in until:
            return state
        time.sleep(0.25)
    raise AssertionError(f"analysis {analysis_id} still {state.get('status')} after {timeout}s: {state}")


def upload(client, path: Path, **fields) -> object:
    with open(path, "rb") as fh:
        return client.post(
            "/datasets",
            files={"file": (path.name, fh, "application/octet-stream")},
            data={k: str(v) for k, v in fields.items()},
        )
