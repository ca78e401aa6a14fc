"""`create_app(settings, repo=None)`: the FastAPI app and the lifespan that owns its pools.

The lifespan builds, once per app: the redis.asyncio pool (short socket
timeouts, no retries, so a dead Redis answers 503 in well under a second and
a restarted one is used again by the next request), the `OnlineReader`, the
model registry and its cache, the prediction log (Kafka, buffered, never
blocking), the event publisher for push (started on first use), and a
Prometheus registry of its own. Each resource has one router.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import FastAPI
from fastapi.routing import APIRoute
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.concurrency import run_in_threadpool

from feature_store.expressions import derived_expressions
from feature_store.heap import long_lived_heap
from feature_store.models import ModelRegistry
from feature_store.online import KeyLayout, OnlineReader
from feature_store.online.client import OnlineClient, open_online
from feature_store.registry import DefinitionsWatch, load_live_repo
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from serving.errors import install_error_handlers
from serving.history import ServingHistory
from serving.hot_path import HotRoutes
from serving.model_cache import ModelCache
from serving.prediction_log import PredictionLog
from serving.routers import features, health, labels, models, monitoring, predict, push, ui
from serving.routers import metrics as metrics_route
from serving.state import ServingConfig, ServingState
from serving.telemetry import Metrics, MetricsMiddleware

__all__ = ["create_app"]

log = structlog.get_logger("serving")


def _redis(settings: Settings, config: ServingConfig) -> OnlineClient:
    assert settings.redis is not None
    return open_online(
        settings.redis, cluster=settings.redis_cluster,
        socket_timeout=config.redis_timeout_s,
        socket_connect_timeout=config.redis_timeout_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
        max_connections=256,
    )


def _check_derived(repo: FeatureRepo) -> None:
    """Derived features of every service compile (DefinitionError names the bad one)."""
    for service in repo.services.values():
        derived_expressions(service, repo)


async def _follow_definitions(app: FastAPI, watch: DefinitionsWatch, every_s: float) -> None:
    """Serve what each new `featurestream apply` made live, within `every_s`; a bad one is logged and skipped."""
    state: ServingState = app.state.serving

    def checked_apply() -> FeatureRepo | None:  # off the loop: SQLite, and compiling derived features
        repo = watch.changed()
        if repo is not None:
            _check_derived(repo)
        return repo

    while True:
        await asyncio.sleep(every_s)
        try:
            repo = await run_in_threadpool(checked_apply)
        except Exception as exc:  # the poller must outlive a bad apply or a registry hiccup
            log.error("definitions_not_reloaded", error=str(exc), kind=type(exc).__name__,
                      keeping=sorted(state.repo.services))
            continue
        if repo is None:
            continue
        await state.use_definitions(repo)
        app.state.repo = repo
        log.info("definitions_reloaded", services=sorted(repo.services), views=sorted(repo.views))


def create_app(settings: Settings, repo: FeatureRepo | None = None, *, repo_path: Path | None = None,
               config: ServingConfig | None = None) -> FastAPI:
    """The serving app. Without `repo`, definitions come from the registry (else the file at `repo_path`).

    Derived features of every service are checked here, so a bad expression
    fails the start (DefinitionError), not a request. An app that loaded its
    definitions itself follows later applies (`ServingConfig.definitions_poll_s`).
    """
    config = config or ServingConfig()
    watch = DefinitionsWatch(settings, repo_path) if repo is None and config.definitions_poll_s > 0 else None
    if repo is None:
        repo = watch.load() if watch is not None else load_live_repo(settings, repo_path)
    _check_derived(repo)
    metrics = Metrics()
    registry = ModelRegistry.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServingState = app.state.serving
        if settings.redis:
            state.redis = _redis(settings, config)
            state.reader = OnlineReader(state.redis, KeyLayout(config.key_prefix or settings.online_prefix),
                                        cache_keys=config.online_cache_keys)
        await state.prediction_log.start()
        follow = None if watch is None else asyncio.create_task(
            _follow_definitions(app, watch, config.definitions_poll_s))
        history = asyncio.create_task(state.history.run())  # the dashboard's serving section
        log.info("serving_started", redis=bool(settings.redis), kafka=bool(settings.kafka),
                 services=sorted(state.repo.services), models=len(registry.names()))
        try:
            # what exists now lives as long as the app: out of every collection, and collections rare
            # (`feature_store.heap`: full ones had paused every route for ~3-8 ms, for 80-120 ms unfrozen)
            with long_lived_heap():
                yield
        finally:
            for task in (follow, history):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await state.prediction_log.stop()
            await state.close_publisher()
            if state.redis is not None:
                await state.redis.aclose()
                state.redis = None
                state.reader = None

    app = FastAPI(
        title="featurestream",
        summary="Online features, predictions and the model registry of a streaming feature store.",
        version="1",
        lifespan=lifespan,
        # metrics are Prometheus (`serving.telemetry`); FastAPI's own OpenTelemetry hooks would look up the
        # global providers on every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.serving = ServingState(
        settings=settings, config=config, repo=repo, metrics=metrics, models=registry,
        model_cache=ModelCache(registry, ttl_s=config.model_ttl_s),
        prediction_log=PredictionLog(settings.kafka, metrics, topic=config.prediction_topic,
                                     partitions=settings.partitions, max_buffered=config.prediction_buffer),
        history=ServingHistory(metrics, bucket_s=config.history_bucket_s),
    )
    # what the dashboard router (serving/routers/ui.py) reads from app.state
    app.state.settings = settings
    app.state.repo = repo
    app.state.dashboard_models = lambda: [v.to_dict() for v in registry.list()]
    install_error_handlers(app)
    for module in (features, predict, push, models, health, metrics_route, ui):
        app.include_router(module.router)
    app.include_router(labels.router)
    app.include_router(monitoring.router)
    app.add_middleware(HotRoutes, routes=[route for route in (*features.router.routes, *predict.router.routes)
                                          if isinstance(route, APIRoute)])
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: times the hot routes too
    return app
