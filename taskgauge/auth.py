"""API keys (docs/deployment.md): ``Authorization: Bearer tg_<prefix>_<secret>``.

A key is shown once (``taskgauge keys create NAME``); the database keeps its public ``prefix`` (for lookup)
and the SHA-256 of the secret part (the secret is 32 random bytes, so a fast hash is enough — there is nothing
to brute-force). Each key belongs to an owner; every resource belongs to an owner, and another owner's id
answers 404 as if it did not exist.

Embedded default: on first start ``taskgauge serve`` creates the owner ``local`` and a key, written to
``DATA_DIR/local_api_key`` (mode 600). The CLI client reads that file, so a newcomer never types a key. The
dashboard never receives that key: ``serve`` prints a one-time sign-in link (Jupyter's model) whose token only the
console that started the server sees; the sign-in page trades it, once, for a new key of the ``local`` owner
(:func:`issue_signin_token`, :func:`redeem_signin_token`). Keys are listed and revoked with ``taskgauge keys
list|revoke``; a revoked key gets 401.

>>> key = generate_key()
>>> prefix, secret = split_key(key)
>>> key.startswith("tg_") and len(prefix) == 12 and hash_secret(secret) != secret
True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from taskgauge import db

LOCAL_KEY_FILENAME = "local_api_key"
LOCAL_OWNER = "local"
SIGNIN_TOKEN_FILENAME = "signin_token"
DASHBOARD_KEY_NAME = "dashboard sign-in"


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
    row = db.ApiKey(
        id=db.new_id(),
        owner_id=owner.id,
        name=name,
        prefix=prefix,
        secret_sha256=hash_secret(secret),
        created_at=db.utcnow(),
    )
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
    _write_private(path, key + "\n")
    return path


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by this user only (0600 whatever the umask or a stale temp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- sign-in tokens
def signin_token_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / SIGNIN_TOKEN_FILENAME


def issue_signin_token(data_dir: str | Path) -> str:
    """A new one-time dashboard sign-in token (it replaces any earlier one). Only its SHA-256 and issue time are
    stored, in ``DATA_DIR/signin_token`` (0600); the token itself goes to the console that asked for it."""
    token = secrets.token_urlsafe(32)
    _write_private(
        signin_token_path(data_dir), json.dumps({"sha256": hash_secret(token), "issued_at": time.time()}) + "\n"
    )
    return token


def redeem_signin_token(data_dir: str | Path, token: str, ttl_s: float) -> bool:
    """True exactly once for the current token while it is younger than ``ttl_s``: the token file is claimed by
    an atomic rename, so of two concurrent redemptions one wins, and a second use finds nothing. A wrong token
    leaves the current one valid."""
    path = signin_token_path(data_dir)
    try:
        stored = json.loads(path.read_text())
        digest, issued = str(stored["sha256"]), float(stored["issued_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not token or len(token) > 200 or not hmac.compare_digest(digest, hash_secret(token)):
        return False
    claimed = path.with_name(f".{path.name}.{secrets.token_hex(8)}.claimed")
    try:
        os.rename(path, claimed)  # atomic: exactly one caller gets the file
    except FileNotFoundError:
        return False
    try:
        # the file we claimed may be a newer token issued since we read it: redeem only the one we checked
        again = json.loads(claimed.read_text())
        if not hmac.compare_digest(str(again.get("sha256", "")), digest):
            os.rename(claimed, path)
            return False
    except (OSError, ValueError):
        return False
    finally:
        claimed.unlink(missing_ok=True)
    return 0 <= time.time() - issued <= ttl_s


# ---------------------------------------------------------------------------------------------- key lifecycle
@dataclass(frozen=True)
class KeyInfo:
    id: str
    prefix: str
    name: str
    owner: str
    created_at: str
    revoked: bool


def list_keys(session: Session) -> list[KeyInfo]:
    """Every key (never a secret): id, public prefix, name, owner name, creation time, revoked."""
    rows = session.execute(
        select(db.ApiKey, db.Owner.name)
        .join(db.Owner, db.Owner.id == db.ApiKey.owner_id)
        .order_by(db.ApiKey.created_at, db.ApiKey.id)
    ).all()
    return [
        KeyInfo(
            id=k.id,
            prefix=k.prefix,
            name=k.name,
            owner=owner,
            revoked=bool(k.revoked),
            created_at=k.created_at.isoformat(timespec="seconds") if k.created_at else "",
        )
        for k, owner in rows
    ]


def find_key(session: Session, ident: str) -> db.ApiKey | None:
    """A key by its id, its public prefix, or the whole key (``tg_<prefix>_…``)."""
    ident = ident.strip()
    if ident.startswith("tg_"):
        try:
            ident = split_key(ident)[0]
        except ValueError:
            ident = ident[3:15]
    return session.scalar(select(db.ApiKey).where((db.ApiKey.id == ident) | (db.ApiKey.prefix == ident)))


def revoke_key(session: Session, ident: str) -> db.ApiKey | None:
    """Revoke a key (by id, prefix or the whole key); None when there is no such key. Flushes; the caller commits.
    From then on the key gets 401. Revoking is final (make a new key with ``keys create``)."""
    row = find_key(session, ident)
    if row is not None:
        row.revoked = True
        session.flush()
    return row
