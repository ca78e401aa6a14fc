"""Prometheus metrics of one app, in its own CollectorRegistry (tests stay isolated).

Per route request latency, online read latency (one pipelined round trip plus
decoding), per-feature served statuses (missing rate = missing / all) and
freshness (event-time age), predictions per model version, and the
prediction log's buffer. What every request updates (latencies, per-feature
statuses and ages) is kept as plain numbers (`serving.tallies`); the rest are
prometheus_client metrics with their label children cached.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from serving.tallies import CounterTally, HistogramTally

__all__ = ["Metrics", "MetricsMiddleware"]

# fine below 10 ms, where the serving targets are (1.5 ms for one entity, 10 ms for 100): the dashboard's
# quantiles are estimated within a bucket (`serving.history`)
_LATENCY_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5)
_AGE_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400, 30 * 86400)


class Metrics:
    """Every metric the serving layer exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = HistogramTally("featurestream_http_request_seconds", "HTTP request latency by route.",
                                              ["route", "method", "status"], _LATENCY_BUCKETS, r)
        self.online_read_seconds = HistogramTally("featurestream_online_read_seconds",
                                                  "One pipelined Redis read of feature vectors, incl. decoding.",
                                                  [], _LATENCY_BUCKETS, r)
        self.online_read_errors = Counter("featurestream_online_read_errors", "Online reads that failed (Redis down).",
                                          registry=r)
        self.feature_values = CounterTally("featurestream_feature_values", "Served feature values by status.",
                                           ["feature", "status"], r)
        self.feature_age_seconds = HistogramTally("featurestream_feature_age_seconds",
                                                  "Event-time age of served values (oldest per request and feature).",
                                                  ["feature"], _AGE_BUCKETS, r)
        self.predictions = Counter("featurestream_predictions", "Answered predictions by model version.",
                                   ["model", "version", "fallback"], registry=r)
        self.prediction_log_dropped = Counter("featurestream_prediction_log_dropped",
                                              "Prediction log records dropped (buffer full).", registry=r)
        self.prediction_log_sent = Counter("featurestream_prediction_log_sent",
                                           "Prediction log records handed to Kafka.", registry=r)
        self.prediction_log_buffered = Gauge("featurestream_prediction_log_buffered",
                                             "Prediction log records waiting for Kafka.", registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.request_seconds.observe((route, method, str(status)), seconds)

    def observe_read(self, seconds: float) -> None:
        self.online_read_seconds.observe((), seconds)

    def observe_features(self, feature: str, counts: dict[str, int], oldest_age_ms: int | None) -> None:
        for status, n in counts.items():
            if n:
                self.feature_values.inc((feature, status), n)
        if oldest_age_ms is not None:
            self.feature_age_seconds.observe((feature,), max(oldest_age_ms, 0) / 1000.0)

    def count_predictions(self, model: str, version: int, fallback: bool, n: int) -> None:
        if n:
            self._child(self.predictions, model, str(version), "true" if fallback else "false").inc(n)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class MetricsMiddleware:
    """Pure ASGI middleware timing each HTTP request under its route template (`/v1/predict/{model}`)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(template, scope.get("method", ""), status, time.perf_counter() - start)
