"""The hot path's tallies export what prometheus_client's own Counter and Histogram export for the same
observations (the oracle), on random label values, amounts and observed values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from serving.tallies import CounterTally, HistogramTally

BUCKETS = (0.0005, 0.001, 0.5, 1.0, 60.0, 86400.0)
labels = st.tuples(st.sampled_from(["a:x", "b:y", 'q"uote\\d']), st.sampled_from(["present", "missing"]))
observed = st.one_of(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from(BUCKETS))


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The exposition lines, less prometheus_client's `_created` timestamps (the tallies have none)."""
    return sorted(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(labels, st.integers(min_value=1, max_value=1000), observed), max_size=40))
def test_tallies_export_what_prometheus_client_would(observations: list[tuple[tuple[str, str], int, float]]) -> None:
    ours, oracle = CollectorRegistry(), CollectorRegistry()
    counts = CounterTally("fs_values", "Served values.", ["feature", "status"], ours)
    ages = HistogramTally("fs_age_seconds", "Ages.", ["feature"], BUCKETS, ours)
    latency = HistogramTally("fs_read_seconds", "Reads.", [], BUCKETS, ours)  # unlabelled: exported at 0 at once
    total = CounterTally("fs_errors", "Errors.", [], ours)
    counts_oracle = Counter("fs_values", "Served values.", ["feature", "status"], registry=oracle)
    ages_oracle = Histogram("fs_age_seconds", "Ages.", ["feature"], buckets=BUCKETS, registry=oracle)
    latency_oracle = Histogram("fs_read_seconds", "Reads.", buckets=BUCKETS, registry=oracle)
    total_oracle = Counter("fs_errors", "Errors.", registry=oracle)
    for (feature, status), n, value in observations:
        counts.inc((feature, status), n)
        counts_oracle.labels(feature, status).inc(n)
        ages.observe((feature,), value)
        ages_oracle.labels(feature).observe(value)
        latency.observe((), value)
        latency_oracle.observe(value)
        total.inc((), n)
        total_oracle.inc(n)
    assert _exposed(ours) == _exposed(oracle)
