"""Serving's own failures and the one place that maps every FeatureStoreError to HTTP.

Status codes: unknown feature/service/model 404; invalid definitions,
schemas, payloads 422; auth 401 (no or unknown key) / 403 (key lacks the
right); stale feature under a `reject` policy 409; oversize batch 413;
Redis unreachable 503. Bodies are `{"error": <kind>, "detail": <what to fix>}`.
Request validation errors name the field. Nothing a caller sends becomes a 500.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from feature_store.errors import (
    ApprovalError,
    BrokerUnavailable,
    ConfigError,
    DefinitionError,
    FeatureStoreError,
    ModelIntegrityError,
    OnlineStoreUnavailable,
    RegistryError,
    SchemaError,
    UnknownFeatureError,
)

__all__ = [
    "AuthenticationError",
    "BatchTooLarge",
    "InvalidRequest",
    "PermissionDenied",
    "StaleFeatureRejected",
    "install_error_handlers",
    "json_error",
    "status_for",
]

log = structlog.get_logger("serving")


class AuthenticationError(FeatureStoreError):
    """No API key, or one that matches no configured key (401)."""


class PermissionDenied(FeatureStoreError):
    """A known key without the right for this endpoint (403)."""


class BatchTooLarge(FeatureStoreError, ValueError):
    """More entities than the server accepts in one request (413)."""


class StaleFeatureRejected(FeatureStoreError):
    """A feature is older than its service's `reject` staleness policy allows (409)."""


class InvalidRequest(FeatureStoreError, ValueError):
    """A well-formed payload whose content does not fit the definitions (422)."""


_STATUS: tuple[tuple[type[FeatureStoreError], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDenied, 403),
    (UnknownFeatureError, 404),
    (StaleFeatureRejected, 409),
    (BatchTooLarge, 413),
    (InvalidRequest, 422),
    (DefinitionError, 422),
    (SchemaError, 422),
    (OnlineStoreUnavailable, 503),
    (BrokerUnavailable, 503),
    (ApprovalError, 403),
    (ModelIntegrityError, 500),  # our stored artifact is bad, not the caller's input
    (RegistryError, 409),
    (ConfigError, 500),
)


def status_for(exc: FeatureStoreError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def json_error(status: int, kind: str, detail: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": kind, "detail": detail}), status_code=status,
                    media_type="application/json", headers=headers)


async def _feature_store_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FeatureStoreError)  # registered for this type only
    status = status_for(exc)
    detail = " ".join(str(exc).split())
    if status >= 500:
        log.warning("request_failed", error=type(exc).__name__, status=status, detail=detail)
    headers = {"WWW-Authenticate": "X-API-Key"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": "1"}
    return json_error(status, type(exc).__name__, detail, headers)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # registered for this type only
    problems = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        problems.append({"field": location or "body", "problem": error.get("msg", "invalid")})
    return json_error(422, "RequestValidationError", problems)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # registered for this type only
    return json_error(exc.status_code, "HTTPException", exc.detail, dict(exc.headers or {}) or None)


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping on `app`."""
    app.add_exception_handler(FeatureStoreError, _feature_store_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
