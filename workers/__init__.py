"""taskgauge workers: Celery app, tasks, and the analysis pipeline (orchestration of estimators)."""
