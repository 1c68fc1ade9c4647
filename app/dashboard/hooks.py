"""The few facts the dashboard needs from the service, read in one place.

``is_embedded()``: the server runs the embedded default (SQLite database and the serverless broker).
``read_local_key()``: the embedded default's local API key (written by ``taskgauge serve`` on first start).
"""

from __future__ import annotations

from taskgauge.auth import local_key_path
from taskgauge.settings import get_settings


def is_embedded() -> bool:
    """True only for the embedded default: SQLite *and* no broker configured. PostgreSQL or Redis: False."""
    s = get_settings()
    return s.is_sqlite and s.embedded_broker


def read_local_key() -> str | None:
    path = local_key_path(get_settings().DATA_DIR)
    if not path.is_file():
        return None
    return path.read_text().strip() or None
