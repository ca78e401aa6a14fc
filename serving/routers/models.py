"""Model registry over HTTP: list and show (read), register (write), promote and roll back (admin).

Registering a pickled flavor (river, sklearn) needs an admin key: unpickling
runs code, so only admins may add artifacts that the server will load. Rule
models need a write key. The key's name is recorded as the actor.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path
from starlette.concurrency import run_in_threadpool

from feature_store.models import ModelVersion
from feature_store.settings import Settings
from serving.api_models import PromoteRequest, RegisterRequest, RollbackRequest
from serving.auth import authorize
from serving.deps import AdminActor, ReadActor, WriteActor, app_settings
from serving.errors import InvalidRequest, PermissionDenied
from serving.state import ServingState, get_state

__all__ = ["router"]

router = APIRouter(tags=["models"])
_State = Annotated[ServingState, Depends(get_state)]
_Name = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,100}$", description="Model name.")]
_Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown model or version"}}


def _summary(versions: list[ModelVersion]) -> dict[str, Any]:
    production = next((v.version for v in versions if v.stage == "production"), None)
    latest = versions[-1]
    return {"name": latest.name, "production_version": production, "latest_version": latest.version,
            "versions": len(versions), "feature_service": latest.feature_service}


@router.get("/v1/models")
def list_models(state: _State, _actor: ReadActor) -> dict[str, Any]:
    """Every registered model with its production and latest version."""
    by_name: dict[str, list[ModelVersion]] = {}
    for version in state.models.list():
        by_name.setdefault(version.name, []).append(version)
    return {"models": [_summary(v) for _, v in sorted(by_name.items())]}


@router.get("/v1/models/{name}", responses=_ERRORS)
def show_model(name: _Name, state: _State, _actor: ReadActor) -> dict[str, Any]:
    """All versions of a model (metadata, metrics, lineage) and its stage audit trail."""
    versions = state.models.list(name)
    return {**_summary(versions), "versions": [v.to_dict() for v in versions],
            "audit": [e.to_dict() for e in state.models.audit(name)]}


@router.get("/v1/models/{name}/versions/{version}", responses=_ERRORS)
def show_version(name: _Name, version: _Version, state: _State, _actor: ReadActor) -> dict[str, Any]:
    return state.models.get(name, version).to_dict()


@router.post("/v1/models/{name}/versions", status_code=201,
             responses={**_ERRORS, 401: {"description": "No or unknown key"},
                        403: {"description": "Pickled flavors need an admin key"},
                        422: {"description": "The artifact does not load or fit its flavor"}})
async def register(name: _Name, body: RegisterRequest, state: _State, actor: WriteActor,
                   settings: Annotated[Settings, Depends(app_settings)],
                   x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None) -> dict[str, Any]:
    """Register a new immutable version (stage `staging`)."""
    if body.flavor != "rule":
        try:
            authorize(settings, x_api_key, "admin")
        except PermissionDenied:
            raise PermissionDenied(
                f"key {actor!r} may register rule models only; {body.flavor} artifacts are pickles and need an "
                f"admin key (FEATURESTREAM_ADMIN_KEYS)") from None
        try:
            artifact: Any = base64.b64decode(body.artifact_b64 or "", validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("artifact_b64 is not valid base64") from None
    else:
        artifact = body.expression
    if body.feature_service is not None:
        service = state.service(body.feature_service)
        fingerprint: str | None = service.fingerprint
    else:
        fingerprint = None
    version = await run_in_threadpool(
        state.models.register, name, artifact, flavor=body.flavor, feature_service=body.feature_service,
        service_fingerprint=fingerprint, features=body.features, metrics=body.metrics,
        training_set_ref=body.training_set_ref, params=body.params, data_range=body.data_range,
        fallback=body.fallback, description=body.description, actor=actor)
    return version.to_dict()


@router.post("/v1/models/{name}/versions/{version}/promote", responses=_ERRORS)
def promote(name: _Name, version: _Version, body: PromoteRequest, state: _State, actor: AdminActor) -> dict[str, Any]:
    """Move a version to a stage; promoting to production archives the current production version."""
    moved = state.models.promote(name, version, body.stage, actor=actor, reason=body.reason)
    state.model_cache.invalidate(name)
    return moved.to_dict()


@router.post("/v1/models/{name}/rollback", responses={**_ERRORS, 409: {"description": "No earlier production"}})
def rollback(name: _Name, body: RollbackRequest, state: _State, actor: AdminActor) -> dict[str, Any]:
    """Production goes back to the version that held it before."""
    restored = state.models.rollback(name, actor=actor, reason=body.reason)
    state.model_cache.invalidate(name)
    return restored.to_dict()
