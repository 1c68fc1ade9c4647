"""API keys (docs/deployment.md): ``Authorization: Bearer tg_<prefix>_<secret>``.

A key is shown once (``taskgauge keys create NAME``); the database keeps its public ``prefix`` (for lookup)
and the SHA-256 of the secret part (the secret is 32 random bytes, so a fast hash is enough — there is nothing
to brute-force). Each key belongs to an owner; every resource belongs to an owner, and another owner's id
answers 404 as if it did not exist.

Embedded default: on first start ``taskgauge serve`` creates the owner ``local`` and a key, written to
``DATA_DIR/local_api_key`` (mode 600). The CLI client and the dashboard read that file, so a newcomer never
types a key.

>>> key = generate_key()
>>> prefix, secret = split_key(key)
>>> key.startswith("tg_") and len(prefix) == 12 and hash_secret(secret) != secret
True
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from taskgauge import db

LOCAL_KEY_FILENAME = "local_api_key"
LOCAL_OWNER = "local"


def generate_key() -> str:
    return f"tg_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def split_key(key: str) -> tuple[str, str]:
    parts = key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != "tg" or len(parts[1]) != 12 or not parts[2]:
        raise ValueError("not a taskgauge API key (expected tg_<12 hex>_<secret>)")
    return parts[1], parts[2]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    owner_id: str
    key_id: str
    key_name: str


def create_key(session: Session, name: str, *, owner_name: str | None = None) -> tuple[db.ApiKey, str]:
    """Create a key (and its owner: a new owner named ``owner_name or name``, or the existing one of that
    name). Flushes only; the caller commits. Returns the row and the plaintext key (show it once)."""
    owner_name = owner_name or name
    owner = session.scalar(select(db.Owner).where(db.Owner.name == owner_name).order_by(db.Owner.created_at))
    if owner is None:
        owner = db.Owner(id=db.new_id(), name=owner_name, created_at=db.utcnow())
        session.add(owner)
        session.flush()
    key = generate_key()
    prefix, secret = split_key(key)
    row = db.ApiKey(id=db.new_id(), owner_id=owner.id, name=name, prefix=prefix,
                    secret_sha256=hash_secret(secret), created_at=db.utcnow())
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, key: str) -> Principal | None:
    try:
        prefix, secret = split_key(key)
    except ValueError:
        return None
    row = session.scalar(select(db.ApiKey).where(db.ApiKey.prefix == prefix))
    if row is None or row.revoked or not hmac.compare_digest(row.secret_sha256, hash_secret(secret)):
        return None
    return Principal(owner_id=row.owner_id, key_id=row.id, key_name=row.name)


def local_key_path(data_dir: str | Path | None = None) -> Path:
    """Where the embedded default keeps its local key: ``DATA_DIR/local_api_key``."""
    if data_dir is None:
        from taskgauge.settings import get_settings

        data_dir = get_settings().DATA_DIR
    return Path(data_dir) / LOCAL_KEY_FILENAME


def ensure_local_key(session_factory, data_dir: Path) -> Path:
    """Create the embedded default's local key file once (and its key row); returns the file's path.

    If the file exists but its key is unknown to the database (a fresh database), a new key replaces it.
    """
    path = local_key_path(data_dir)
    with session_factory() as s, s.begin():
        if path.is_file() and authenticate(s, path.read_text().strip()) is not None:
            return path
        _row, key = create_key(s, "local key", owner_name=LOCAL_OWNER)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.replace(tmp, path)
    return path
