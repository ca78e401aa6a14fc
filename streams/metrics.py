"""Prometheus metrics of a stream worker, on a registry of its own (so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["WorkerMetrics"]

_FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3600.0, 86400.0)
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class WorkerMetrics:
    """events/s (a counter by status), lag per partition, dead letters, freshness, batch latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("featurestream_worker_events", "Events consumed, by source and status "
                              "(applied, late, invalid)", ["source", "status"], registry=r)
        self.dead_letters = Counter("featurestream_worker_dead_letters", "Events sent to the dead-letter topic",
                                    ["source"], registry=r)
        self.fenced = Counter("featurestream_worker_fenced_batches", "Batches the online store refused "
                              "(already applied, or another worker owns the partition)", ["source"], registry=r)
        self.lag = Gauge("featurestream_worker_lag", "Fetch highwater minus the next offset to process",
                         ["source", "partition"], registry=r)
        self.freshness = Histogram("featurestream_worker_freshness_seconds",
                                   "Redis write time (its clock at the batch's commit) minus event time",
                                   ["source"], buckets=_FRESHNESS_BUCKETS, registry=r)
        self.batch_latency = Histogram("featurestream_worker_batch_seconds", "Time to process one partition batch",
                                       ["source"], buckets=_BATCH_BUCKETS, registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics on `port` (0 picks none: the caller reads the registry directly)."""
        if port:
            start_http_server(port, addr=addr, registry=self.registry)
