"""The web dashboard: static page at `/ui`, its files at `/ui/static/...`, data at `GET /v1/dashboard`.

The page is plain HTML/JS/CSS with one vendored charting file (uPlot, MIT,
see `serving/ui/static/LICENSE.uPlot.txt`): no build step, nothing fetched
from the internet. It polls `/v1/dashboard`, a read-only summary built by
`serving.ui.dashboard` from what the app already holds (`app.state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse

from feature_store.settings import Settings, get_settings
from serving.ui.dashboard import build_summary

__all__ = ["router"]

STATIC = Path(__file__).resolve().parent.parent / "ui" / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain",
          ".svg": "image/svg+xml"}

router = APIRouter(tags=["dashboard"])


@router.get("/ui", include_in_schema=False)
def ui_index() -> FileResponse:
    """The dashboard page."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/ui/", include_in_schema=False)
def ui_slash() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui/static/{name}", include_in_schema=False)
def ui_static(name: str) -> FileResponse:
    """One file of the page; only names present in the static folder, nothing below it."""
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file() or path.suffix not in _TYPES:
        raise HTTPException(status_code=404, detail=f"no dashboard file {name!r}")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


@router.get("/v1/dashboard", summary="Dashboard summary (read-only)")
def dashboard(request: Request) -> dict[str, Any]:
    """Views and services with versions, per-source counts (applied/late/invalid = DLQ), throughput,
    freshness now and over the last 15 minutes, drift per feature, model versions with metrics and lineage.

    Parts that are not available are named in `missing` instead of failing the request.
    """
    state = request.app.state
    settings: Settings = getattr(state, "settings", None) or get_settings()
    missing: list[str] = []
    repo = getattr(state, "repo", None)
    versions = _call(getattr(state, "registry_versions", None), missing, "registry versions")
    models = getattr(state, "dashboard_models", None)
    drift = getattr(state, "dashboard_drift", None)
    if models is None:
        missing.append("models: the app publishes no model registry (app.state.dashboard_models)")
    if drift is None:
        missing.append("drift: the app publishes no drift monitor (app.state.dashboard_drift)")
    return build_summary(repo, settings.data_dir, versions=versions, models=models, drift=drift, missing=missing)


def _call(provider: Any, missing: list[str], what: str) -> Any:
    if provider is None:
        return None
    try:
        return provider()
    except Exception as exc:  # optional data: degrade, name the problem
        missing.append(f"{what}: {' '.join(str(exc).split())[:200]}")
        return None
