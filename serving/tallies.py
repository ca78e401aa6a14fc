"""Prometheus counters and histograms that the hot routes update as plain numbers, exported when scraped.

Why: a 1-entity `/v1/features` answer with 8 features made ~38 prometheus_client
calls (a served-status count and an age observation per feature, the request
and read latencies), each taking a lock per value: about a tenth of the
server's CPU per request. Here an observation is a dict lookup, a bisect and
two additions on a list; `collect()` (prometheus_client's custom collector
protocol) turns the lists into the same metric families, names, labels and
buckets at scrape time.

Updated from the event loop's thread only (the async routes and middleware); a
scrape from another thread reads each number atomically (the GIL), so at worst
one series' sum and buckets are one observation apart during that scrape.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["CounterTally", "HistogramTally"]

Labels = tuple[str, ...]


class CounterTally:
    """A counter per label values (`<name>_total` when exported)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._values: dict[Labels, float] = {} if labelnames else {(): 0}  # unlabelled: exported from the start
        registry.register(self)

    def inc(self, labels: Labels, amount: float = 1) -> None:
        self._values[labels] = self._values.get(labels, 0) + amount

    def values(self) -> dict[Labels, float]:
        """A copy of every series' value."""
        return dict(self._values)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self._values.items()):
            family.add_metric(list(labels), value)
        yield family


class HistogramTally:
    """A histogram per label values: per bucket counts (not cumulated until exported) and the sum."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._bounds = tuple(float(b) for b in buckets)  # ascending; +Inf is implied
        self._les = [*(floatToGoString(b) for b in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        self._series: dict[Labels, list[float]] = {}  # counts per bucket (len(bounds) + 1), then the sum
        if not labelnames:  # exported from the start, as prometheus_client does
            self._series[()] = [0] * (len(self._bounds) + 2)
        registry.register(self)

    def observe(self, labels: Labels, value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0] * (len(self._bounds) + 2)
        series[bisect_left(self._bounds, value)] += 1  # the first bucket whose upper bound `le` >= value
        series[-1] += value

    @property
    def bounds(self) -> tuple[float, ...]:
        """The buckets' upper bounds, ascending (the +Inf bucket is implied)."""
        return self._bounds

    def counts(self) -> dict[Labels, list[float]]:
        """A copy of the per bucket counts (not cumulated; the +Inf bucket last) of every series."""
        return {labels: series[:-1] for labels, series in list(self._series.items())}

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in list(self._series.items()):
            counts = series[:-1]
            family.add_metric(list(labels), list(zip(self._les, accumulate(counts), strict=True)),
                              sum_value=series[-1])
        yield family
