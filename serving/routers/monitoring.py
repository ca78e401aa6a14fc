"""Monitoring, champion/challenger and training runs over HTTP.

- `GET /v1/monitoring/{service}`: the worker's drift/quality report of a feature
  service (or a request-only model), with recent alerts from the alert log.
- `GET /v1/models/{name}/champion-challenger`: champion and challenger versions,
  their performance on joined labels (live vs shadow), the online learner's
  progressive metrics, label-join counts and open promotion requests.
- `PUT|DELETE /v1/models/{name}/challenger`, `POST /v1/models/{name}/promotions`,
  `.../promotions/{id}/approve|reject`: the four-eyes workflow (admin keys; the
  approver's key must differ from the requester's). Roll back with the models
  router's `POST /v1/models/{name}/rollback`, one call.
- `GET /v1/runs`, `/v1/runs/compare`, `/v1/runs/{id}`: training runs side by side.

The worker writes the reports and counters to Redis; this router only reads
them (and exports them to `/metrics` through a collector refreshed in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Query
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from feature_store.errors import OnlineStoreUnavailable, UnknownFeatureError
from feature_store.monitoring import AlertLog, alert_log_path
from feature_store.training import Approvals, RunStore
from feature_store.training.live import LiveKeys, read_live
from serving.deps import AdminActor, ReadActor
from serving.state import ServingState, get_state

__all__ = ["router"]

_State = Annotated[ServingState, Depends(get_state)]
_Name = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,100}$", description="Model name.")]
_Service = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,200}$", description="Feature service (or model) name.")]
_REFRESH_S = 5.0
_STATUS_CODE = {"ok": 0.0, "warn": 1.0, "drift": 2.0}


class ChallengerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    reason: str = Field(default="", max_length=2000)


class PromotionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    reason: str = Field(min_length=1, max_length=2000, description="Why this version should serve.")


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=2000)


def _approvals(state: ServingState) -> Approvals:
    return Approvals.from_settings(state.settings, state.models)


def _keys(state: ServingState) -> LiveKeys:
    return LiveKeys(state.config.key_prefix or state.settings.online_prefix)  # the worker writes under the same


def _redis(state: ServingState) -> Any:
    if state.redis is None:
        raise OnlineStoreUnavailable("monitoring reads Redis; set FEATURESTREAM_REDIS")
    return state.redis


async def _report(state: ServingState, service: str) -> dict[str, Any] | None:
    try:
        raw = await _redis(state).get(_keys(state).monitor(service))
    except OnlineStoreUnavailable:
        raise
    except Exception as exc:
        raise OnlineStoreUnavailable(f"Redis is unreachable ({type(exc).__name__}); retry") from None
    return orjson.loads(raw) if raw else None


# ---------------------------------------------------------------- Prometheus

class _Collector:
    """Exports the last reports and live model performance read from Redis (refreshed in the background)."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}
        self.live: dict[str, dict[str, Any]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        psi = GaugeMetricFamily("featurestream_monitoring_feature_psi", "PSI of served values vs the training "
                                "reference (worker report)", labels=["service", "feature"])
        ks = GaugeMetricFamily("featurestream_monitoring_feature_ks", "KS statistic of served values vs the "
                               "training reference", labels=["service", "feature"])
        nulls = GaugeMetricFamily("featurestream_monitoring_feature_null_rate", "Null rate of served values",
                                  labels=["service", "feature"])
        status = GaugeMetricFamily("featurestream_monitoring_status", "0 ok, 1 warn, 2 drift", labels=["service"])
        drifts = GaugeMetricFamily("featurestream_monitoring_detector_drifts", "Changes signalled by river "
                                   "detectors per stream", labels=["service", "stream"])
        perf = GaugeMetricFamily("featurestream_model_label_accuracy", "Accuracy on joined labels per version and "
                                 "role (live = served, shadow = challenger)", labels=["model", "version", "role"])
        for service, report in self.reports.items():
            status.add_metric([service], _STATUS_CODE.get(report.get("status", "ok"), 0.0))
            for feature, d in (report.get("features") or {}).items():
                psi.add_metric([service, feature], float(d.get("psi") or 0.0))
                nulls.add_metric([service, feature], float(d.get("served_null_rate") or 0.0))
                if d.get("ks_statistic") is not None:
                    ks.add_metric([service, feature], float(d["ks_statistic"]))
            for stream, s in (report.get("streams") or {}).items():
                drifts.add_metric([service, stream], float(s.get("drifts", 0)))
        for model, live in self.live.items():
            for version, roles in (live.get("performance") or {}).items():
                for role, m in roles.items():
                    perf.add_metric([model, version, role], float(m["accuracy"]))
        yield from (psi, ks, nulls, status, drifts, perf)


async def _refresh(state: ServingState, collector: _Collector, stop: asyncio.Event) -> None:
    """Re-read reports and live counters every few seconds; a dead Redis keeps the last figures."""
    while not stop.is_set():
        try:
            names = sorted(set(state.repo.services) | set(await run_in_threadpool(state.models.names)))
            for name in names:
                report = await _report(state, name)
                if report is not None:
                    collector.reports[name] = report
            for model in await run_in_threadpool(state.models.names):
                collector.live[model] = await read_live(_redis(state), _keys(state), model)
        except Exception:  # Redis down or a registry being written: try again next round
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=_REFRESH_S)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServingState = app.state.serving
    collector = _Collector()
    state.metrics.registry.register(collector)  # a duck-typed prometheus collector
    stop = asyncio.Event()
    task = asyncio.create_task(_refresh(state, collector, stop), name="monitoring-refresh")
    try:
        yield
    finally:
        stop.set()  # ends the loop even if a client library swallowed the cancellation
        task.cancel()
        await asyncio.wait({task}, timeout=2.0)
        with contextlib.suppress(KeyError):
            state.metrics.registry.unregister(collector)


router = APIRouter(lifespan=_lifespan)


# ---------------------------------------------------------------- monitoring

@router.get("/v1/monitoring/{service}", tags=["monitoring"],
            responses={404: {"description": "Unknown service and no report"}, 503: {"description": "Redis down"}})
async def monitoring(service: _Service, state: _State, _actor: ReadActor,
                     alerts: Annotated[int, Query(ge=0, le=1000)] = 20) -> dict[str, Any]:
    """Drift (PSI/KS per feature), data quality, detector signals and recent alerts of a service."""
    report = await _report(state, service)
    known = service in state.repo.services or service in await run_in_threadpool(state.models.names)
    if report is None and not known:
        raise UnknownFeatureError(f"no feature service or model {service!r} (services: "
                                  f"{', '.join(sorted(state.repo.services)) or 'none'})")
    log = AlertLog(alert_log_path(FsPath(state.settings.data_dir)))
    recent = await run_in_threadpool(log.read, service=service, limit=alerts)
    return {"service": service, "status": (report or {}).get("status", "unknown"), "report": report,
            "alerts": [a.to_dict() for a in recent]}


@router.get("/v1/monitoring/{service}/alerts", tags=["monitoring"])
def monitoring_alerts(service: _Service, state: _State, _actor: ReadActor,
                      since_ms: Annotated[int | None, Query(ge=0)] = None,
                      kind: Annotated[str | None, Query(max_length=100)] = None,
                      limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict[str, Any]:
    """The alert log of a service, oldest first (the newest `limit`)."""
    log = AlertLog(alert_log_path(FsPath(state.settings.data_dir)))
    return {"service": service,
            "alerts": [a.to_dict() for a in log.read(service=service, kind=kind, since_ms=since_ms, limit=limit)]}


# ---------------------------------------------------------------- champion / challenger

def _champion(state: ServingState, name: str) -> int | None:
    try:
        return state.models.get(name).version
    except UnknownFeatureError:
        state.models.list(name)  # unknown model: 404
        return None


@router.get("/v1/models/{name}/champion-challenger", tags=["models"])
async def champion_challenger(name: _Name, state: _State, _actor: ReadActor) -> dict[str, Any]:
    """Champion (production) and challenger (shadow) versions, their label performance and the learner."""
    champion = await run_in_threadpool(_champion, state, name)
    approvals = _approvals(state)
    challenger = await run_in_threadpool(approvals.challenger, name)
    pending = await run_in_threadpool(approvals.requests, name, status="pending")
    live = await read_live(_redis(state), _keys(state), name)
    return {"model": name, "champion": champion, "challenger": challenger, **live,
            "pending_promotions": [r.to_dict() for r in pending]}


@router.put("/v1/models/{name}/challenger", tags=["models"])
def set_challenger(name: _Name, body: ChallengerIn, state: _State, actor: AdminActor) -> dict[str, Any]:
    """Make a staging version the challenger: it scores live traffic in shadow (logged, never returned)."""
    version = _approvals(state).set_challenger(name, body.version, actor=actor, reason=body.reason)
    return {"model": name, "challenger": version.version, "set_by": actor}


@router.delete("/v1/models/{name}/challenger", tags=["models"])
def clear_challenger(name: _Name, state: _State, actor: AdminActor) -> dict[str, Any]:
    _approvals(state).clear_challenger(name, actor=actor)
    return {"model": name, "challenger": None}


@router.post("/v1/models/{name}/promotions", status_code=201, tags=["models"])
async def request_promotion(name: _Name, body: PromotionIn, state: _State, actor: AdminActor) -> dict[str, Any]:
    """Ask for a version to go to production; a different admin key must approve (four eyes).

    The metrics at the time (registered metrics, live/shadow label performance) are kept with the request.
    """
    live = await read_live(_redis(state), _keys(state), name)
    metrics = {"performance": live["performance"], "learner": (live["learner"] or {}).get("metrics")}
    req = await run_in_threadpool(_approvals(state).request_promotion, name, body.version, requester=actor,
                                  reason=body.reason, metrics=metrics)
    return req.to_dict()


@router.post("/v1/models/{name}/promotions/{request_id}/approve", tags=["models"],
             responses={403: {"description": "Same key as the requester, or not an admin key"}})
def approve(name: _Name, request_id: Annotated[int, Path(ge=1)], body: DecisionIn, state: _State,
            actor: AdminActor) -> dict[str, Any]:
    """Approve with a second admin key: the version goes to production (the old one is archived)."""
    approvals = _approvals(state)
    if approvals.request(request_id).model != name:
        raise UnknownFeatureError(f"promotion request {request_id} is not about model {name!r}")
    promoted = approvals.approve(request_id, approver=actor, reason=body.reason)
    state.model_cache.invalidate(name)
    return {"request": approvals.request(request_id).to_dict(), "production": promoted.to_dict()}


@router.post("/v1/models/{name}/promotions/{request_id}/reject", tags=["models"])
def reject(name: _Name, request_id: Annotated[int, Path(ge=1)], body: DecisionIn, state: _State,
           actor: AdminActor) -> dict[str, Any]:
    approvals = _approvals(state)
    if approvals.request(request_id).model != name:
        raise UnknownFeatureError(f"promotion request {request_id} is not about model {name!r}")
    return approvals.reject(request_id, approver=actor, reason=body.reason or "rejected").to_dict()


@router.get("/v1/models/{name}/promotions", tags=["models"])
def promotions(name: _Name, state: _State, _actor: ReadActor) -> dict[str, Any]:
    """Promotion requests and the audit: challenger changes, requests, decisions, stage moves and rollbacks."""
    approvals = _approvals(state)
    state.models.list(name)  # 404 for an unknown model
    stages: list[Any] = [e.to_dict() for e in state.models.audit(name)]
    return {"model": name, "requests": [r.to_dict() for r in approvals.requests(name)],
            "audit": approvals.audit(name), "stages": stages}


# ---------------------------------------------------------------- runs

def _runs(state: ServingState) -> RunStore:
    return RunStore.from_settings(state.settings)


@router.get("/v1/runs", tags=["runs"])
def list_runs(state: _State, _actor: ReadActor, model: Annotated[str | None, Query(max_length=100)] = None,
              status: Annotated[str | None, Query(max_length=20)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Training runs (batch fits and online snapshots), newest first."""
    return {"runs": [r.to_dict() for r in _runs(state).list(model, status=status, limit=limit)]}


@router.get("/v1/runs/compare", tags=["runs"])
def compare_runs(state: _State, _actor: ReadActor,
                 ids: Annotated[list[str], Query(min_length=1, max_length=20, description="Run ids.")]
                 ) -> dict[str, Any]:
    """Runs side by side: one row per field, metric and parameter, one column per run."""
    return _runs(state).compare(ids)


@router.get("/v1/runs/{run_id}", tags=["runs"])
def show_run(run_id: Annotated[str, Path(max_length=64)], state: _State, _actor: ReadActor) -> dict[str, Any]:
    return _runs(state).get(run_id).to_dict()
