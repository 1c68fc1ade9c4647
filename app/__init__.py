"""taskgauge HTTP side: FastAPI app, settings, ORM, ingest, storage, dashboard and the CLI."""
