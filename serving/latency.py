"""Recent latency per route, for the dashboard: from the histograms the app keeps for Prometheus anyway.

Why: an operator without a Prometheus server still wants to see how fast the
API answers and whether Redis is what slows it. The request and read
histograms (`serving.telemetry`) count every request, so a copy of their
counts every `bucket_s` seconds gives one histogram per interval, at no cost
on the request path. Quantiles are estimated within a bucket, linearly, as
Prometheus's `histogram_quantile` does: as coarse as the buckets, which are
fine below 10 ms.

The figures are this process's: with several API processes, each dashboard
shows the one that answered it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from serving.telemetry import Metrics

__all__ = ["REDIS_READ", "UNWATCHED_ROUTES", "LatencyHistory", "bucket_quantile"]

UNWATCHED_ROUTES = frozenset({"/ui", "/ui/", "/ui/static/{name}", "/v1/dashboard", "/metrics", "/healthz", "/readyz",
                              "unmatched"})
"""Not shown: the dashboard's own polling, scrapes, probes and unknown paths."""

REDIS_READ = "online read (Redis)"
"""The name of the online read's series: one pipelined round trip plus decoding, inside the feature routes."""

_Counts = dict[tuple[str, ...], list[float]]


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


class LatencyHistory:
    """Copies of the latency histograms every `bucket_s`, kept for `window_s`; `summary()` for the dashboard."""

    def __init__(self, metrics: Metrics, *, bucket_s: float = 10.0, window_s: float = 900.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._requests = metrics.request_seconds
        self._reads = metrics.online_read_seconds
        self.bucket_s = bucket_s
        self.window_s = window_s
        self._clock = clock
        self._snapshots: deque[tuple[float, _Counts]] = deque(maxlen=int(window_s // bucket_s) + 1)
        self.snapshot()

    def snapshot(self) -> None:
        """Copy the counts now (the app's lifespan calls this every `bucket_s`)."""
        self._snapshots.append((self._clock(), self._grouped()))

    async def run(self) -> None:
        """Snapshot every `bucket_s` until cancelled."""
        while True:
            await asyncio.sleep(self.bucket_s)
            self.snapshot()

    def summary(self, last_s: float = 60.0) -> dict[str, Any]:
        """Per route (and the Redis read): requests/s, p50/p99 and server errors over the last `last_s`, and a
        series of [time s, p50 ms, p99 ms, requests/s] per snapshot interval over the window."""
        now, current = self._clock(), self._grouped()
        since, base = next(((t, c) for t, c in self._snapshots if t >= now - last_s - self.bucket_s / 2),
                           self._snapshots[-1])
        bounds = self._requests.bounds
        routes = []
        for name in sorted(current, key=_order):
            width = len(current[name])
            recent = _minus(current[name], base.get(name), width)
            elapsed = max(now - since, 1e-9)
            series = []
            for (t0, before), (t1, after) in zip(self._snapshots, list(self._snapshots)[1:], strict=False):
                counts = _minus(after.get(name), before.get(name), width)
                p50, p99 = bucket_quantile(bounds, counts[:-1], 0.5), bucket_quantile(bounds, counts[:-1], 0.99)
                series.append([round(t1, 3), _ms(p50), _ms(p99), round(sum(counts[:-1]) / (t1 - t0), 2)])
            routes.append({"name": name[0], "requests": int(sum(recent[:-1])),
                           "requests_per_s": round(sum(recent[:-1]) / elapsed, 2),
                           "p50_ms": _ms(bucket_quantile(bounds, recent[:-1], 0.5)),
                           "p99_ms": _ms(bucket_quantile(bounds, recent[:-1], 0.99)),
                           "server_errors": int(recent[-1]), "series": series})
        return {"scope": f"this API process (pid {os.getpid()})", "last_s": last_s, "bucket_s": self.bucket_s,
                "routes": routes}

    def _grouped(self) -> _Counts:
        """Per route ("POST /v1/features", statuses together) and the Redis read: bucket counts, then 5xx count."""
        out: _Counts = {}
        for (route, method, status), counts in self._requests.counts().items():
            if route in UNWATCHED_ROUTES:
                continue
            key = (f"{method} {route}",)
            into = out.setdefault(key, [0.0] * (len(counts) + 1))
            for i, count in enumerate(counts):
                into[i] += count
            if status.startswith("5"):
                into[-1] += sum(counts)
        for counts in self._reads.counts().values():
            out[(REDIS_READ,)] = [*counts, 0.0]
        return {key: counts for key, counts in out.items() if sum(counts)}


def _minus(after: list[float] | None, before: list[float] | None, width: int) -> list[float]:
    """Counts added between two copies (a copy without the route counts zero)."""
    after, before = after or [0.0] * width, before or [0.0] * width
    return [a - b for a, b in zip(after, before, strict=True)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _order(key: tuple[str, ...]) -> tuple[bool, str]:
    """Routes by path, the Redis read last."""
    return key[0] == REDIS_READ, key[0].split(" ", 1)[-1]
