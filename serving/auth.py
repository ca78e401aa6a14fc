"""API keys: `X-API-Key` checked against `Settings.api_keys` and `admin_keys`.

Levels: `read` (features, predict, model reads) is open while no api key is
configured, else needs any known key; `write` (push, model register) always
needs a key; `admin` (promote, rollback, registering pickled models) needs
an admin key. Admin keys hold every right. Keys are compared with
`hmac.compare_digest` against every configured key (no early exit) and are
never logged; the key's *name* is the actor in audit trails.
"""

from __future__ import annotations

import hmac
from typing import Literal

from feature_store.settings import Settings
from serving.errors import AuthenticationError, PermissionDenied

__all__ = ["HEADER", "Level", "authorize"]

HEADER = "X-API-Key"
Level = Literal["read", "write", "admin"]


def _match(key: str, keys: dict[str, str]) -> str | None:
    found: str | None = None
    given = key.encode()
    for name, secret in keys.items():
        if hmac.compare_digest(given, secret.encode()):
            found = name
    return found


def authorize(settings: Settings, key: str | None, level: Level) -> str:
    """The actor name for `key` at `level`, or AuthenticationError (401) / PermissionDenied (403)."""
    api = {n: s.get_secret_value() for n, s in settings.api_keys.items()}
    admin = {n: s.get_secret_value() for n, s in settings.admin_keys.items()}
    if level == "read" and not api and not key:
        return "anonymous"
    if not key:
        if not api and not admin:
            raise AuthenticationError(
                f"this endpoint needs an API key in the {HEADER} header, and none is configured on the server; "
                f"set FEATURESTREAM_API_KEYS / FEATURESTREAM_ADMIN_KEYS"
            )
        raise AuthenticationError(f"missing {HEADER} header; send an API key")
    admin_name = _match(key, admin)
    api_name = _match(key, api)
    if admin_name is not None:
        return admin_name
    if api_name is None:
        if level == "read" and not api:
            return "anonymous"  # reads are open; an unknown key does not close them
        raise AuthenticationError(f"the {HEADER} key is not a known key; check the key you send")
    if level == "admin":
        raise PermissionDenied(f"key {api_name!r} may not do this; it needs an admin key (FEATURESTREAM_ADMIN_KEYS)")
    return api_name
