"""The Celery application (DESIGN.md §2, §8).

``celery_app`` is created at import time but connects to nothing until used. Its configuration comes from a
:class:`WorkerConfig` handed to :func:`configure` by the process that starts it — ``taskgauge worker`` /
``taskgauge serve`` (``app.service_cli``) build it from ``app.settings`` — so ``workers`` never imports ``app``.

Brokers:

* production: ``BROKER_URL`` (Redis), with ``visibility_timeout`` above the longest analysis;
* embedded default (``BROKER_URL`` empty): kombu's serverless *filesystem* transport with atomic puts
  (``workers.fs_transport``), messages as files under
  ``DATA_DIR/broker`` — the same code path, no server.

Reliability settings (STYLE.md, Tasks): ``task_acks_late`` + ``task_reject_on_worker_lost`` (a killed worker's
task is delivered again), ``worker_prefetch_multiplier=1``, no result backend (the lifecycle lives in the
``analyses`` table). Because the filesystem transport cannot redeliver a message whose worker was SIGKILLed,
``workers.tasks`` adds a transport-independent lease + sweeper on top (see there).

Queues: ``default`` (CPU workers) and ``gpu`` (CUDA workers consume ``gpu`` and ``default``); an analysis asked
for with ``device="cuda"`` is routed to ``gpu``.

Test hook: ``TASKGAUGE_EXTRA_ESTIMATORS`` names extra modules (comma-separated) imported by the API and by each
worker process, so that tests can register a deliberately slow or failing estimator inside a real worker.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

DEFAULT_QUEUE = "default"
GPU_QUEUE = "gpu"
TASK_RUN_ANALYSIS = "taskgauge.run_analysis"
TASK_SWEEP = "taskgauge.sweep_stale"
TASK_SCHEDULES = "taskgauge.run_due_schedules"
EXTRA_ESTIMATORS_ENV = "TASKGAUGE_EXTRA_ESTIMATORS"


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker (and the API, to enqueue) needs to know. Built from ``app.settings`` by the app."""

    database_url: str
    data_dir: Path
    broker_url: str = ""  # empty: embedded filesystem transport under data_dir/broker
    device: str = "auto"
    memory_budget_mb: int | None = None  # TASKGAUGE_MEMORY_BUDGET_MB when set: default of estimators' memory_budget_mb
    visibility_timeout_s: int = 6 * 3600  # Redis: longer than the longest analysis
    lease_s: float = 60.0  # a running analysis whose heartbeat is older than this is re-queued
    heartbeat_s: float = 5.0
    progress_interval_s: float = 0.5  # progress writes are throttled to one per interval (and per stage change)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return not self.broker_url.strip()

    @property
    def blob_dir(self) -> Path:
        return Path(self.data_dir) / "blobs"

    @property
    def broker_dir(self) -> Path:
        return Path(self.data_dir) / "broker"


celery_app = Celery("taskgauge", include=["workers.tasks"])
celery_app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=DEFAULT_QUEUE,
    task_queues=(Queue(DEFAULT_QUEUE), Queue(GPU_QUEUE)),
    task_create_missing_queues=True,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    enable_utc=True,
    # Celery beat (``taskgauge beat``, or ``-B`` inside the embedded worker): scan for due schedules.
    beat_schedule={"taskgauge-run-due-schedules": {"task": TASK_SCHEDULES, "schedule": 30.0}},
)

_config: WorkerConfig | None = None


def configure(config: WorkerConfig) -> Celery:
    """Point ``celery_app`` at the broker of ``config`` and remember the config for the tasks."""
    global _config
    _config = config
    if config.embedded:
        from workers import fs_transport

        fs_transport.register()
        folder = config.broker_dir / "queue"
        control = config.broker_dir / "control"
        staging = config.broker_dir / "staging"
        for d in (folder, control, staging):
            d.mkdir(parents=True, exist_ok=True)
        celery_app.conf.update(
            broker_url=f"{fs_transport.SCHEME}://",  # kombu's filesystem transport with atomic puts
            broker_transport_options={
                "data_folder_in": str(folder),
                "data_folder_out": str(folder),
                "staging_folder": str(staging),
                "control_folder": str(control),
                "store_processed": False,
                "polling_interval": 0.25,
            },
        )
    else:
        celery_app.conf.update(
            broker_url=config.broker_url,
            broker_transport_options={"visibility_timeout": int(config.visibility_timeout_s)},
        )
    return celery_app


def get_config() -> WorkerConfig:
    if _config is None:
        raise RuntimeError(
            "the taskgauge Celery app is not configured; start workers with `taskgauge worker` "
            "(it reads the TASKGAUGE_* settings), not `celery -A workers.celery_app`"
        )
    return _config


def load_extra_estimator_modules() -> list[str]:
    """Import the modules named in ``TASKGAUGE_EXTRA_ESTIMATORS`` (a test hook; see the module doc)."""
    names = [n.strip() for n in os.environ.get(EXTRA_ESTIMATORS_ENV, "").split(",") if n.strip()]
    for name in names:
        importlib.import_module(name)
    return names


def enqueue_analysis(analysis_id: str, queue: str = DEFAULT_QUEUE) -> None:
    """Send ``run_analysis(analysis_id)``; call only after the analysis row is committed."""
    celery_app.send_task(
        TASK_RUN_ANALYSIS,
        args=[analysis_id],
        queue=queue,
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0},
    )
