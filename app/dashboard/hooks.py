"""The few facts the dashboard needs from the service, read in one place (so a layout change is one edit).

``is_embedded()``: the server runs the embedded default (SQLite database, serverless broker).
``read_local_key()``: the embedded default's local API key (written by the service on first start).
"""

from __future__ import annotations

from pathlib import Path


def _settings():
    from app.settings import get_settings

    return get_settings()


def is_embedded() -> bool:
    try:
        s = _settings()
    except Exception:  # noqa: BLE001 - no settings module: not a server we know
        return False
    emb = getattr(s, "embedded", None)
    if isinstance(emb, bool):
        return emb
    if callable(emb):
        return bool(emb())
    url = str(getattr(s, "database_url", "") or "")
    return url == "" or url.startswith("sqlite")


def local_key_path() -> Path | None:
    try:
        from app import auth  # type: ignore[attr-defined]

        fn = getattr(auth, "local_key_path", None)
        if fn is not None:
            return Path(fn())
    except Exception:  # noqa: BLE001
        pass
    try:
        return Path(_settings().data_dir) / "local_api_key"
    except Exception:  # noqa: BLE001
        return None


def read_local_key() -> str | None:
    path = local_key_path()
    if path is None or not path.is_file():
        return None
    return path.read_text().strip() or None
