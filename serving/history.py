"""What this API process served recently, for the dashboard: from the tallies it keeps for Prometheus anyway.

Why: an operator without a Prometheus server still wants to see how fast the
API answers, whether Redis is what slows it, which features come back
missing, defaulted or stale, and which model versions answer (after a
promotion or a rollback) and how often their fallback does. The tallies (`serving.telemetry`) count every
request and served value, so a copy of their counts every `bucket_s` seconds
gives one histogram per interval, at no cost on the request path. Quantiles
are estimated within a bucket, linearly, as Prometheus's `histogram_quantile`
does: as coarse as the buckets, which are fine below 10 ms.

The figures are this process's: with several API processes, each dashboard
shows the one that answered it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

from serving.api_models import SERVED_STATUSES as STATUSES
from serving.telemetry import Metrics

__all__ = ["REDIS_READ", "UNWATCHED_ROUTES", "ServingHistory", "bucket_quantile"]

UNWATCHED_ROUTES = frozenset({"/ui", "/ui/", "/ui/static/{name}", "/v1/dashboard", "/metrics", "/healthz", "/readyz",
                              "unmatched"})
"""Not shown: the dashboard's own polling, scrapes, probes and unknown paths."""

REDIS_READ = "online read (Redis)"
"""The name of the online read's series: one pipelined round trip plus decoding, inside the feature routes."""

_Counts = dict[str, list[float]]


@dataclass(frozen=True)
class _Copy:
    """The tallies at one moment: per route bucket counts then the 5xx count; per feature its statuses'
    counts; per feature the age histogram's bucket counts; per (model, version) predictions, then those the
    fallback answered."""

    at: float
    routes: _Counts
    statuses: _Counts
    ages: _Counts
    predictions: dict[tuple[str, int], list[float]]


def bucket_quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float | None:
    """The `q` quantile of observations counted per bucket (`counts[i]` in (bounds[i-1], bounds[i]], the last
    one above every bound), interpolated within its bucket; None without observations.

    Above the last bound it answers the last bound: the histogram knows no more.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0.0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * max(0.0, rank - below) / count
        below += count
    return bounds[-1]


class ServingHistory:
    """Copies of the serving tallies every `bucket_s`, kept for `window_s`; `summary()` for the dashboard.

    Only the routes are charted over the whole window; the per-feature and per-model parts of a copy (a
    deployment may serve hundreds of features) are dropped once it is older than `RECENT_S`.
    """

    RECENT_S = 120.0
    """How far back `summary(last_s)` may look for features and models."""

    def __init__(self, metrics: Metrics, *, bucket_s: float = 10.0, window_s: float = 900.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self.bucket_s = bucket_s
        self._clock = clock
        self._copies: deque[_Copy] = deque(maxlen=int(window_s // bucket_s) + 1)
        self._full = int(self.RECENT_S // bucket_s) + 4  # the newest copies kept whole: RECENT_S and 2 buckets
        self.snapshot()

    def snapshot(self) -> None:
        """Copy the tallies now (the app's lifespan calls this every `bucket_s`)."""
        self._copies.append(self._copy())
        if len(self._copies) > self._full:
            old = self._copies[-self._full - 1]
            if old.statuses or old.ages or old.predictions:
                self._copies[-self._full - 1] = replace(old, statuses={}, ages={}, predictions={})

    async def run(self) -> None:
        """Snapshot every `bucket_s` until cancelled."""
        while True:
            await asyncio.sleep(self.bucket_s)
            self.snapshot()

    def summary(self, last_s: float = 60.0) -> dict[str, Any]:
        """Over the last `last_s`: per route (and the Redis read) requests/s, p50/p99 and 5xx, with a series of
        [time s, p50 ms, p99 ms, requests/s] per copy interval over the window; per served feature values/s,
        the share of each status and the age p50/p99 (seconds); per model version predictions/s and the share
        its fallback answered. `last_s` is at most `RECENT_S`."""
        assert last_s <= self.RECENT_S, "features and models are kept for RECENT_S"
        copies = list(self._copies)  # one C-level copy: the loop's thread appends while a dashboard thread reads
        now = self._copy()
        base = next((c for c in copies if c.at >= now.at - last_s - self.bucket_s / 2), copies[-1])
        elapsed = max(now.at - base.at, 1e-9)
        return {"scope": f"this API process (pid {os.getpid()})", "last_s": last_s, "bucket_s": self.bucket_s,
                "routes": self._routes(copies, now, base, elapsed), "features": self._features(now, base, elapsed),
                "models": self._models(now, base, elapsed)}

    def _routes(self, copies: list[_Copy], now: _Copy, base: _Copy, elapsed: float) -> list[dict[str, Any]]:
        bounds = self._metrics.request_seconds.bounds
        out = []
        for name in sorted(now.routes, key=_route_order):
            width = len(now.routes[name])
            recent = _minus(now.routes[name], base.routes.get(name), width)
            series = []
            for before, after in pairwise(copies):
                counts = _minus(after.routes.get(name), before.routes.get(name), width)[:-1]
                series.append([round(after.at, 3), _ms(bucket_quantile(bounds, counts, 0.5)),
                               _ms(bucket_quantile(bounds, counts, 0.99)),
                               round(sum(counts) / (after.at - before.at), 2)])
            out.append({"name": name, "requests": int(sum(recent[:-1])),
                        "requests_per_s": round(sum(recent[:-1]) / elapsed, 2),
                        "p50_ms": _ms(bucket_quantile(bounds, recent[:-1], 0.5)),
                        "p99_ms": _ms(bucket_quantile(bounds, recent[:-1], 0.99)),
                        "server_errors": int(recent[-1]), "series": series})
        return out

    def _features(self, now: _Copy, base: _Copy, elapsed: float) -> list[dict[str, Any]]:
        bounds = self._metrics.feature_age_seconds.bounds
        out = []
        for feature in sorted(now.statuses):
            counts = _minus(now.statuses[feature], base.statuses.get(feature), len(STATUSES))
            served = sum(counts)
            if not served:
                continue
            ages = _minus(now.ages.get(feature), base.ages.get(feature), len(bounds) + 1)
            out.append({"feature": feature, "values": int(served), "values_per_s": round(served / elapsed, 2),
                        "share": {status: round(n / served, 4) for status, n in zip(STATUSES, counts, strict=True)},
                        "age_p50_s": bucket_quantile(bounds, ages, 0.5),
                        "age_p99_s": bucket_quantile(bounds, ages, 0.99)})
        return out

    @staticmethod
    def _models(now: _Copy, base: _Copy, elapsed: float) -> list[dict[str, Any]]:
        out = []
        for (model, version), counts in sorted(now.predictions.items()):
            answered, by_fallback = _minus(counts, base.predictions.get((model, version)), 2)
            if answered:
                out.append({"model": model, "version": version, "predictions": int(answered),
                            "predictions_per_s": round(answered / elapsed, 2),
                            "fallback_share": round(by_fallback / answered, 4)})
        return out

    def _copy(self) -> _Copy:
        routes: _Counts = {}
        for (route, method, status), counts in self._metrics.request_seconds.counts().items():
            if route in UNWATCHED_ROUTES:
                continue
            into = routes.setdefault(f"{method} {route}", [0.0] * (len(counts) + 1))
            for i, count in enumerate(counts):
                into[i] += count
            if status.startswith("5"):
                into[-1] += sum(counts)
        for counts in self._metrics.online_read_seconds.counts().values():
            if sum(counts):
                routes[REDIS_READ] = [*counts, 0.0]
        statuses: _Counts = {}
        for (feature, status), n in self._metrics.feature_values.values().items():
            statuses.setdefault(feature, [0.0] * len(STATUSES))[STATUSES.index(status)] += n
        ages = {feature: counts for (feature,), counts in self._metrics.feature_age_seconds.counts().items()}
        predictions: dict[tuple[str, int], list[float]] = {}
        for family in self._metrics.predictions.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    into = predictions.setdefault((labels["model"], int(labels["version"])), [0.0, 0.0])
                    into[0] += sample.value
                    into[1] += sample.value if labels["fallback"] == "true" else 0.0
        return _Copy(self._clock(), routes, statuses, ages, predictions)


def _minus(after: list[float] | None, before: list[float] | None, width: int) -> list[float]:
    """Counts added between two copies (a copy without the series counts zero)."""
    after, before = after or [0.0] * width, before or [0.0] * width
    return [a - b for a, b in zip(after, before, strict=True)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _route_order(name: str) -> tuple[bool, str]:
    """Routes by path, the Redis read last."""
    return name == REDIS_READ, name.split(" ", 1)[-1]
