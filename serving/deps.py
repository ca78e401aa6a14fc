"""Dependencies shared by the routers: settings (overridable in tests) and API-key levels.

All are `async def`: FastAPI runs sync dependencies in a thread pool, a thread hop per
dependency per request on the hot path.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from feature_store.settings import Settings
from serving.auth import authorize

__all__ = ["AdminActor", "ReadActor", "WriteActor", "app_settings"]


async def app_settings(request: Request) -> Settings:
    """The settings the app was built with; tests swap them with `app.dependency_overrides`."""
    settings: Settings = request.app.state.serving.settings
    return settings


_Key = Annotated[str | None, Header(alias="X-API-Key", description="API key (see FEATURESTREAM_API_KEYS).")]
_Settings = Annotated[Settings, Depends(app_settings)]


async def _read(settings: _Settings, x_api_key: _Key = None) -> str:
    return authorize(settings, x_api_key, "read")


async def _write(settings: _Settings, x_api_key: _Key = None) -> str:
    return authorize(settings, x_api_key, "write")


async def _admin(settings: _Settings, x_api_key: _Key = None) -> str:
    return authorize(settings, x_api_key, "admin")


ReadActor = Annotated[str, Depends(_read)]
WriteActor = Annotated[str, Depends(_write)]
AdminActor = Annotated[str, Depends(_admin)]
