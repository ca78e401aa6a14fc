"""What the hot routes (`/v1/features`, `/v1/predict`) do in place of FastAPI's body and dependency injection.

Why: per request, FastAPI's dependency solving (state, settings, API key) and
body validation cost about as much CPU as the online read itself. These
routes take the `Request`, authorize from the header, and validate the JSON
body with the same pydantic model in one call (`model_validate_json`). The
behaviour is the same: 401/403 before the body is looked at, validation
errors raised as `RequestValidationError` with `body` locations (so the one
error handler formats them), settings swapped by `dependency_overrides` on
`deps.app_settings` still apply. `documented(model)` puts the body schema and
the `X-API-Key` header into the OpenAPI operation, as FastAPI would have.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from feature_store.settings import Settings
from serving.auth import HEADER, Level, authorize
from serving.deps import app_settings
from serving.state import ServingState

__all__ = ["HotRoutes", "authorized", "documented", "json_body", "query_version"]

M = TypeVar("M", bound=BaseModel)
_KEY_HEADER = HEADER.lower().encode()
_VERSION = TypeAdapter(Annotated[int, Field(ge=1)])


def documented(model: type[BaseModel], *parameters: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads `model` from a JSON body and takes the API key header
    (plus `parameters` it reads itself)."""
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}},
        "parameters": [*parameters, {"name": HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                                     "description": "API key (see FEATURESTREAM_API_KEYS)."}],
    }


async def authorized(request: Request, level: Level) -> ServingState:
    """The app's serving state, once the `X-API-Key` header is allowed `level` (else 401/403)."""
    state: ServingState = request.app.state.serving
    settings = state.settings
    override = request.app.dependency_overrides.get(app_settings)
    if override is not None:  # tests and embedders swap settings this way
        settings = override()
        if inspect.isawaitable(settings):
            settings = await settings
    assert isinstance(settings, Settings)
    key = next((v.decode("latin-1") for k, v in request.scope["headers"] if k == _KEY_HEADER), None)
    authorize(settings, key, level)
    return state


async def json_body(request: Request, model: type[M]) -> M:
    """The body validated as `model`; RequestValidationError (422, naming the fields) when it is not."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None


def query_version(request: Request) -> int | None:
    """The `version` query parameter (an integer >= 1) or None; 422 naming `query.version` otherwise."""
    raw = request.query_params.get("version")
    if raw is None:
        return None
    try:
        return _VERSION.validate_python(raw, strict=False)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("query", "version")} for error in exc.errors()]) from None


class HotRoutes:
    """Pure ASGI middleware sending `POST /v1/features` and `POST /v1/predict/{model}` straight to their handlers.

    The same handler functions the FastAPI routes call (which keep the OpenAPI
    documentation), minus FastAPI's per-request routing, dependency and
    exception middleware layers. Errors go through the app's own exception
    handlers (`serving.errors`); `scope["route"]` is the documented route, so
    metrics label the request the same way.
    """

    def __init__(self, app: ASGIApp, routes: list[APIRoute]) -> None:
        self.app = app
        self._routes = {route.path: route for route in routes}  # endpoint(request, **path params)
        assert set(self._routes) == {"/v1/features", "/v1/predict/{model}"}, "the routes this class dispatches"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == "/v1/features":
            template, params = path, {}
        elif path.startswith("/v1/predict/") and "/" not in path[12:] and len(path) > 12:
            template, params = "/v1/predict/{model}", {"model": path[12:]}
        else:
            await self.app(scope, receive, send)
            return
        fastapi_app = scope["app"]
        route = scope["route"] = self._routes[template]
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request, **params)
        except Exception as exc:
            handler = _handler_for(fastapi_app.exception_handlers, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _handler_for(handlers: dict[Any, Any], exc: Exception) -> Any:
    for kind in type(exc).__mro__:
        if kind in handlers:
            return handlers[kind]
    return None
