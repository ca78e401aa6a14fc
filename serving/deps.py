"""Dependencies shared by the routers: settings (overridable in tests) and API-key levels."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from feature_store.settings import Settings
from serving.auth import authorize

__all__ = ["AdminActor", "ReadActor", "WriteActor", "app_settings"]


def app_settings(request: Request) -> Settings:
    """The settings the app was built with; tests swap them with `app.dependency_overrides`."""
    settings: Settings = request.app.state.serving.settings
    return settings


_Key = Annotated[str | None, Header(alias="X-API-Key", description="API key (see FEATURESTREAM_API_KEYS).")]
_Settings = Annotated[Settings, Depends(app_settings)]


def _read(settings: _Settings, x_api_key: _Key = None) -> str:
    return authorize(settings, x_api_key, "read")


def _write(settings: _Settings, x_api_key: _Key = None) -> str:
    return authorize(settings, x_api_key, "write")


def _admin(settings: _Settings, x_api_key: _Key = None) -> str:
    return authorize(settings, x_api_key, "admin")


ReadActor = Annotated[str, Depends(_read)]
WriteActor = Annotated[str, Depends(_write)]
AdminActor = Annotated[str, Depends(_admin)]
