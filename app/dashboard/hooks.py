"""The few facts the dashboard needs from the service, read in one place.

``is_embedded()``: the server runs the embedded default (SQLite database and the serverless broker).
``redeem_signin_token()``: trade the one-time sign-in token for a new key of the ``local`` owner.
"""

from __future__ import annotations

from taskgauge import auth
from taskgauge.context import Context
from taskgauge.settings import get_settings


def is_embedded() -> bool:
    """True only for the embedded default: SQLite *and* no broker configured. PostgreSQL or Redis: False."""
    return get_settings().embedded


def redeem_signin_token(state: Context, token: str) -> str | None:
    """A new API key for the ``local`` owner when ``token`` is the current one-time sign-in token (embedded default
    only), else None. The token is spent by this call."""
    settings = state.settings
    if not settings.embedded or not auth.redeem_signin_token(settings.DATA_DIR, token, settings.SIGNIN_TOKEN_TTL_S):
        return None
    with state.sessions() as s, s.begin():
        _row, key = auth.create_key(s, auth.DASHBOARD_KEY_NAME, owner_name=auth.LOCAL_OWNER)
    return key
