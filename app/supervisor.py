"""Supervision of the embedded worker of ``taskgauge serve`` (issue 15).

``serve`` starts one worker process (with embedded beat in the embedded default) in its own process group.
:class:`WorkerSupervisor` watches it from a thread of the ``serve`` process:

* when the worker's main process dies (even by SIGKILL), what is left of its process group (pool children, the
  embedded beat) is killed at once — no orphaned beat keeps filling the queue — and a new worker is started
  (immediately the first time; with a growing delay, up to 30 s, while it keeps dying within a minute);
* after a restart every ``queued`` analysis is sent again, because the serverless filesystem transport loses the
  messages a killed worker had reserved (extra deliveries are harmless: the claim lets one of them run);
* :func:`worker_state` tells ``/readyz``: while the worker is missing, or started but not yet ready (it touches
  ``DATA_DIR/broker/worker-<pid>.ready`` on Celery's ``worker_ready``), the service is not ready (503).

Analyses left ``running`` by the dead worker are re-queued by the stale-analysis sweeper, which also runs in the
API process (``app.main``), not only in workers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from workers.celery_app import ready_marker

log = logging.getLogger("taskgauge.serve")

_current: WorkerSupervisor | None = None


def worker_state() -> tuple[bool, str]:
    """``(ok, detail)`` of the supervised embedded worker; ``(True, "not supervised here")`` when ``serve`` runs
    without one (production: workers are separate services)."""
    sup = _current
    if sup is None:
        return True, "not supervised here"
    return sup.state()


class WorkerSupervisor:
    def __init__(
        self,
        start: Callable[[], subprocess.Popen],
        broker_dir: Path,
        on_restart: Callable[[], None] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self._start, self.broker_dir, self.on_restart, self.poll_s = start, broker_dir, on_restart, poll_s
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="taskgauge-worker-supervisor", daemon=True)
        self._started_at = 0.0
        self._delay = 0.0

    # ---- lifecycle
    def start(self) -> subprocess.Popen:
        global _current
        with self._lock:
            self.proc = self._start()
            self._started_at = time.monotonic()
        _current = self
        self._thread.start()
        return self.proc

    def stop(self, grace: float = 10.0) -> None:
        """Warm-stop the worker (it finishes a running task for up to ``grace`` s), then kill its process group."""
        global _current
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            proc = self.proc
        if proc is not None:
            stop_group(proc, grace)
            self._forget(proc.pid)
        if _current is self:
            _current = None

    # ---- state
    def state(self) -> tuple[bool, str]:
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return False, "the embedded worker is not running (it is being restarted)"
        if not ready_marker(self.broker_dir, proc.pid).exists():
            return False, f"the embedded worker (pid {proc.pid}) is starting"
        return True, f"ok (embedded worker pid {proc.pid})"

    # ---- the watch loop
    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            log.error(
                "taskgauge: the embedded worker (pid %s) exited with %s; restarting it", proc.pid, proc.returncode
            )
            kill_group(proc.pid)  # its pool children and embedded beat must not outlive it
            self._forget(proc.pid)
            lived = time.monotonic() - self._started_at
            if lived > 60 or self.restarts == 0:
                self._delay = 0.0  # a worker that ran a while (or the first death): restart at once
            else:
                self._delay = min(30.0, max(1.0, self._delay * 2))  # dying at start-up: back off
            if self._delay and self._stop.wait(self._delay):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                self.proc = self._start()
                self._started_at = time.monotonic()
                self.restarts += 1
            print(f"taskgauge: worker process {self.proc.pid} started (restart {self.restarts})", flush=True)
            if self.on_restart is not None:
                try:
                    self.on_restart()
                except Exception:  # noqa: BLE001 - the database may be briefly busy; the sweeper covers running ones
                    log.warning("re-sending queued analyses after the worker restart failed", exc_info=True)

    def _forget(self, pid: int) -> None:
        try:
            ready_marker(self.broker_dir, pid).unlink()
        except OSError:
            pass


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(child: subprocess.Popen, grace: float = 10.0) -> None:
    """Warm-stop ``child`` (SIGTERM, up to ``grace`` s), then SIGKILL whatever is left of its process group (the
    pool process, the embedded beat process)."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    kill_group(child.pid)
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
