"""The Celery application (docs/deployment.md).

``celery_app`` is created at import time but connects to nothing until used. Its configuration comes from the
:class:`taskgauge.settings.Settings` handed to :func:`configure` by the process that starts it (``taskgauge
worker`` / ``serve`` / ``beat``, or the API to enqueue).

Brokers:

* production: ``BROKER_URL`` (Redis), with ``visibility_timeout`` above the longest analysis;
* embedded default (``BROKER_URL`` empty): kombu's serverless *filesystem* transport with atomic puts
  (``workers.fs_transport``), messages as files under ``DATA_DIR/broker`` — the same code path, no server.

Limits: ``task_soft_time_limit``/``task_time_limit`` (``TASKGAUGE_TASK_SOFT_TIME_LIMIT_S``/``_HARD_``) and
``worker_max_memory_per_child`` (``TASKGAUGE_WORKER_MAX_MEMORY_PER_CHILD_MB``).

Fairness: ``worker_prefetch_multiplier=1`` with ``acks_late`` means a worker process reserves one message beyond
the ones it runs at most, so with ``-c 2`` (the embedded default, ``TASKGAUGE_EMBEDDED_CONCURRENCY``) one owner's
long analysis holds one process while the next queued analysis, whoever's it is, runs on the other. Queues are FIFO;
per-owner caps on queued + running analyses (``TASKGAUGE_MAX_ACTIVE_ANALYSES_PER_OWNER``, 429 at POST) keep one
owner from filling them.

Reliability settings: ``task_acks_late`` + ``task_reject_on_worker_lost`` (a killed worker's task is delivered
again), ``worker_prefetch_multiplier=1``, no result backend (the lifecycle lives in the ``analyses`` table).
Because the filesystem transport cannot redeliver a message whose worker was SIGKILLed, ``workers.leases`` adds a
transport-independent lease + sweeper on top.

Queues: ``default`` (CPU workers) and ``gpu`` (CUDA workers consume ``gpu`` and ``default``); an analysis asked
for with ``device="cuda"`` is routed to ``gpu``. The one beat schedule is :func:`beat_schedule`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from taskgauge.services.analyses import DEFAULT_QUEUE, GPU_QUEUE
from taskgauge.settings import Settings

TASK_RUN_ANALYSIS = "taskgauge.run_analysis"
TASK_SCHEDULES = "taskgauge.run_due_schedules"


celery_app = Celery("taskgauge", include=["workers.tasks", "workers.fanout", "workers.presence"])
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
)

_settings: Settings | None = None


def beat_schedule(seconds: float) -> dict[str, Any]:
    """The one beat schedule: a due-schedule scan every ``seconds``. A scan message older than one interval is
    dropped (``expires``): the next scan does the same work."""
    return {
        "taskgauge-due-schedules": {
            "task": TASK_SCHEDULES,
            "schedule": seconds,
            "options": {"expires": max(1.0, seconds)},
        }
    }


def configure(settings: Settings) -> Celery:
    """Point ``celery_app`` at the broker of ``settings`` and remember them for the tasks."""
    global _settings
    _settings = settings
    celery_app.conf.beat_schedule = beat_schedule(settings.SCHEDULE_SCAN_SECONDS)
    celery_app.conf.beat_max_loop_interval = min(settings.SCHEDULE_SCAN_SECONDS, 60.0)
    # Limits per task (issue 15): the soft limit raises SoftTimeLimitExceeded inside the analysis, which ends it
    # failed (workers.tasks); the hard limit kills the child a while later, and a task_failure handler in the
    # worker's main process fails the analysis. A child that grew past the memory setting is replaced after its task.
    celery_app.conf.update(
        task_soft_time_limit=settings.TASK_SOFT_TIME_LIMIT_S,
        task_time_limit=settings.hard_time_limit_s,
        worker_max_memory_per_child=(settings.WORKER_MAX_MEMORY_PER_CHILD_MB * 1024) or None,
    )
    if settings.embedded_broker:
        from workers import fs_transport

        fs_transport.register()
        folder = settings.broker_dir / "queue"
        control = settings.broker_dir / "control"
        staging = settings.broker_dir / "staging"
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
            broker_url=settings.BROKER_URL.strip(),
            broker_transport_options={"visibility_timeout": int(settings.VISIBILITY_TIMEOUT_S)},
        )
    return celery_app


def ready_marker(broker_dir: Path, pid: int) -> Path:
    """The file an embedded worker's main process touches when it is ready (``app.supervisor`` reads it)."""
    return broker_dir / f"worker-{pid}.ready"


def get_settings() -> Settings:
    if _settings is None:
        raise RuntimeError(
            "the taskgauge Celery app is not configured; start workers with `taskgauge worker` "
            "(it reads the TASKGAUGE_* settings), not `celery -A workers.celery_app`"
        )
    return _settings


def enqueue_analysis(analysis_id: str, queue: str = DEFAULT_QUEUE) -> None:
    """Send ``run_analysis(analysis_id)``; call only after the analysis row is committed."""
    celery_app.send_task(
        TASK_RUN_ANALYSIS,
        args=[analysis_id],
        queue=queue,
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0},
    )
