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

from feature_store.repo import FeatureRepo
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
    freshness now and over the last 15 minutes, drift per feature, model versions with metrics and lineage,
    the stream workers with the partitions each holds, their lag and rate,
    and what this API process served (`serving.history`): latency per route and of its Redis reads, served
    features' statuses and ages, predictions per model version.

    Parts that are not available are named in `missing` instead of failing the request.
    """
    state = request.app.state
    settings: Settings = getattr(state, "settings", None) or get_settings()
    missing: list[str] = []
    repo, versions = _definitions(state, settings, missing)
    serving = getattr(state, "serving", None)
    return build_summary(repo, settings.data_dir, versions=versions, models=lambda: _models(settings),
                         drift=lambda: _drift(state, settings, repo), workers=lambda: _workers(state, settings),
                         serving=None if serving is None else serving.history.summary, missing=missing)


def _definitions(state: Any, settings: Settings, missing: list[str]) -> tuple[FeatureRepo | None, dict[str, int]]:
    """The live definitions and their registry versions (the app's repo when it has one)."""
    from feature_store.registry import Registry

    repo: FeatureRepo | None = getattr(state, "repo", None)
    versions: dict[str, int] = {}
    if not settings.registry.exists():
        if repo is None:
            missing.append(f"feature registry: {settings.registry} does not exist; run `featurestream apply`")
        return repo, versions
    try:
        registry = Registry(settings.registry)
        repo = repo or registry.current()
        for name in repo.views:
            versions[name] = registry.version_of(name)
        for name in repo.services:
            history = registry.history("service", name)
            if history:
                versions[name] = history[-1].version
    except Exception as exc:  # the page still shows what it can
        missing.append(f"feature registry: {' '.join(str(exc).split())[:200]}")
    return repo, versions


def _models(settings: Settings) -> list[dict[str, Any]]:
    """Every registered model version, newest first, with metrics and lineage."""
    from feature_store.models import ModelRegistry

    registry = ModelRegistry.from_settings(settings)
    if not registry.db_path.exists():
        return []
    out = []
    for v in sorted(registry.list(), key=lambda v: (v.name, -v.version)):
        lineage: dict[str, Any] = {"service": v.feature_service, "training set": v.training_set_ref,
                                   "by": v.created_by, "sha256": v.sha256[:12], "flavor": v.flavor}
        if v.data_range:
            lineage["data"] = f"{_iso(v.data_range[0])} .. {_iso(v.data_range[1])}"
        out.append({"name": v.name, "version": v.version, "stage": v.stage, "metrics": dict(v.metrics),
                    "lineage": {k: x for k, x in lineage.items() if x}, "created_at": v.created_at})
    return out


def _drift(state: Any, settings: Settings, repo: FeatureRepo | None) -> list[dict[str, Any]]:
    """Per-feature drift: the worker's monitor report of each service in Redis (PSI, KS, null rate)."""
    if repo is None or not settings.redis:
        return []
    import orjson

    from feature_store.training.live import LiveKeys

    keys = LiveKeys(_prefix(state, settings))
    out = []
    with _redis(settings) as client:
        for service in sorted(repo.services):
            raw = client.get(keys.monitor(service))
            if not raw:
                continue
            report = orjson.loads(raw)
            for feature, d in sorted((report.get("features") or {}).items()):
                out.append({"feature": feature, "service": service, "status": d.get("status"), "score": d.get("psi"),
                            "detail": {k: d[k] for k in ("ks_statistic", "served_count", "served_null_rate")
                                       if d.get(k) is not None}})
    return out


def _workers(state: Any, settings: Settings) -> list[dict[str, Any]]:
    """The stream workers' status reports in Redis: partitions held, lag, events/s, stale when silent."""
    import time

    from feature_store.online import KeyLayout
    from feature_store.worker_reports import read_reports

    if not settings.redis:
        return []
    with _redis(settings) as client:
        return read_reports(client, KeyLayout(_prefix(state, settings)), time.time_ns() // 1_000_000)


def _prefix(state: Any, settings: Settings) -> str:
    """The online store's key prefix this app reads (a test app may use its own)."""
    serving = getattr(state, "serving", None)
    return getattr(getattr(serving, "config", None), "key_prefix", None) or settings.online_prefix


def _redis(settings: Settings) -> Any:
    """A short-lived client with short timeouts: a dead Redis costs the page a second, not a hang."""
    from feature_store.online.client import open_online_sync

    assert settings.redis is not None
    return open_online_sync(settings.redis, cluster=settings.redis_cluster, socket_timeout=1.0,
                            socket_connect_timeout=1.0)


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")
