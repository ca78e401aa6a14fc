"""The dashboard's serving figures (`serving.history`) against the raw observations (the oracle), on random
latencies, routes, statuses, served values and intervals; and on the real app with the real Redis."""

from __future__ import annotations

import math
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from serving.api_models import SERVED_STATUSES as STATUSES
from serving.history import REDIS_READ, ServingHistory, bucket_quantile
from serving.telemetry import Metrics
from tests.serving.conftest import OnlineWriter, last

BOUNDS = Metrics().request_seconds.bounds
AGE_BOUNDS = Metrics().feature_age_seconds.bounds
latencies = st.floats(min_value=0, max_value=4.0, allow_nan=False)
quantiles = st.floats(min_value=0.01, max_value=1.0)


def _bucket_of(value: float, bounds: Sequence[float] = BOUNDS) -> tuple[float, float]:
    """(lower, upper) bounds of the bucket a value is counted in; above the last bound: (last, last)."""
    i = bisect_left(bounds, value)
    return (bounds[-1], bounds[-1]) if i == len(bounds) else (bounds[i - 1] if i else 0.0, bounds[i])


def _counts(values: list[float]) -> list[float]:
    counts = [0.0] * (len(BOUNDS) + 1)
    for v in values:
        counts[bisect_left(BOUNDS, v)] += 1
    return counts


def _true_quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile: the ceil(q * n)-th smallest value."""
    return sorted(values)[max(1, math.ceil(q * len(values))) - 1]


@settings(max_examples=300, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=200), quantiles)
def test_a_quantile_is_estimated_inside_the_bucket_of_the_true_one(values: list[float], q: float) -> None:
    lower, upper = _bucket_of(_true_quantile(values, q))
    estimate = bucket_quantile(BOUNDS, _counts(values), q)
    assert estimate is not None
    assert lower <= estimate <= upper


def test_no_observations_no_quantile() -> None:
    assert bucket_quantile(BOUNDS, [0.0] * (len(BOUNDS) + 1), 0.99) is None


ROUTES = [("/v1/features", "POST"), ("/v1/predict/{model}", "POST"), ("/v1/dashboard", "GET"), ("/healthz", "GET")]
observation = st.tuples(st.integers(min_value=0, max_value=8), st.sampled_from(ROUTES),
                        st.sampled_from(["200", "422", "503"]), latencies)


def _replay(intervals: int, observe: Callable[[Metrics, int], None]) -> dict[str, Any]:
    """`observe(metrics, k)` for k in 0..intervals, a copy after each but the last (10 s apart, from 0 s); the
    summary 5 s into the last interval, still open then."""
    clock = [0.0]
    metrics = Metrics()
    history = ServingHistory(metrics, bucket_s=10.0, clock=lambda: clock[0])
    for interval in range(intervals + 1):
        observe(metrics, interval)
        clock[0] = 10.0 * (interval + 1) if interval < intervals else 10.0 * intervals + 5
        if interval < intervals:
            history.snapshot()
    return history.summary(last_s=60.0)


def _first_recent(intervals: int) -> int:
    """The last minute starts at the first copy at most 65 s old: the interval it opens."""
    return max(0, intervals - 6)


@settings(max_examples=150, deadline=None)
@given(st.lists(observation, max_size=120), st.integers(min_value=1, max_value=9), st.lists(latencies, max_size=30))
def test_history_matches_the_observations_per_route_and_interval(
        observations: list[tuple[int, tuple[str, str], str, float]], intervals: int, reads: list[float]) -> None:
    seen: list[tuple[int, str, str, float]] = []

    def observe(metrics: Metrics, interval: int) -> None:
        for at, (route, method), status, value in observations:
            if at == interval:
                metrics.observe_request(route, method, int(status), value)
                seen.append((interval, f"{method} {route}", status, value))
        if interval == 0:
            for value in reads:
                metrics.observe_read(value)

    summary = _replay(intervals, observe)
    routes = {r["name"]: r for r in summary["routes"]}
    shown = {name for _, name, _, _ in seen if name in ("POST /v1/features", "POST /v1/predict/{model}")}
    assert set(routes) == shown | ({REDIS_READ} if reads else set())
    first = _first_recent(intervals)
    for name in shown:
        recent = [v for i, n, _, v in seen if n == name and i >= first]
        route = routes[name]
        assert route["requests"] == len(recent)
        assert route["server_errors"] == sum(1 for i, n, s, _ in seen if n == name and i >= first and s == "503")
        assert route["requests_per_s"] == pytest.approx(len(recent) / (10.0 * (intervals - first) + 5), abs=0.01)
        if recent:
            lower, upper = _bucket_of(_true_quantile(recent, 0.99))
            assert lower * 1000 - 1e-3 <= route["p99_ms"] <= upper * 1000 + 1e-3
        assert len(route["series"]) == intervals
        for k, (t, p50, p99, rps) in enumerate(route["series"]):
            closed = [v for i, n, _, v in seen if n == name and i == k]
            assert t == 10.0 * (k + 1)
            assert rps == pytest.approx(len(closed) / 10.0)
            if closed:
                lower, upper = _bucket_of(_true_quantile(closed, 0.5))
                assert p50 is not None
                assert lower * 1000 - 1e-3 <= p50 <= upper * 1000 + 1e-3
            else:
                assert (p50, p99) == (None, None)
    if reads:
        assert routes[REDIS_READ]["series"][0][3] == pytest.approx(len(reads) / 10.0)


served = st.tuples(st.integers(min_value=0, max_value=25), st.sampled_from(["a:x", "b:y"]),
                  st.fixed_dictionaries({status: st.integers(min_value=0, max_value=5) for status in STATUSES}),
                  st.one_of(st.none(), st.integers(min_value=-5_000, max_value=40 * 86_400_000)))


@settings(max_examples=150, deadline=None)
@given(st.lists(served, max_size=80), st.integers(min_value=1, max_value=25))  # older copies slimmed from 16
def test_served_features_match_the_observations(
        observations: list[tuple[int, str, dict[str, int], int | None]], intervals: int) -> None:
    def observe(metrics: Metrics, interval: int) -> None:
        for at, feature, counts, age_ms in observations:
            if at == interval:
                metrics.observe_features(feature, counts, age_ms)

    summary = _replay(intervals, observe)
    features = {f["feature"]: f for f in summary["features"]}
    first = _first_recent(intervals)
    for feature in ("a:x", "b:y"):
        recent = [(counts, age) for at, f, counts, age in observations if f == feature and first <= at <= intervals]
        total = sum(sum(counts.values()) for counts, _ in recent)
        if not total:
            assert feature not in features
            continue
        got = features[feature]
        assert got["values"] == total
        assert got["values_per_s"] == pytest.approx(total / (10.0 * (intervals - first) + 5), abs=0.01)
        for status in STATUSES:
            assert got["share"][status] == pytest.approx(sum(c[status] for c, _ in recent) / total, abs=1e-4)
        ages = [max(age, 0) / 1000 for _, age in recent if age is not None]
        if ages:
            lower, upper = _bucket_of(_true_quantile(ages, 0.99), AGE_BOUNDS)
            assert lower <= got["age_p99_s"] <= upper
        else:
            assert got["age_p50_s"] is None


answered = st.tuples(st.integers(min_value=0, max_value=25),
                    st.sampled_from([("fraud", 1), ("fraud", 2), ("churn", 1)]), st.booleans(),
                    st.integers(min_value=0, max_value=50))


@settings(max_examples=150, deadline=None)
@given(st.lists(answered, max_size=60), st.integers(min_value=1, max_value=25))
def test_predictions_per_model_version_match_the_observations(
        observations: list[tuple[int, tuple[str, int], bool, int]], intervals: int) -> None:
    def observe(metrics: Metrics, interval: int) -> None:
        for at, (model, version), fallback, n in observations:
            if at == interval:
                metrics.count_predictions(model, version, fallback, n)

    summary = _replay(intervals, observe)
    first = _first_recent(intervals)
    expected: dict[tuple[str, int], list[int]] = {}
    for at, key, fallback, n in observations:
        if first <= at <= intervals:
            into = expected.setdefault(key, [0, 0])
            into[0] += n
            into[1] += n if fallback else 0
    got = {(m["model"], m["version"]): m for m in summary["models"]}
    assert set(got) == {key for key, (n, _) in expected.items() if n}
    for key, model in got.items():
        n, by_fallback = expected[key]
        assert model["predictions"] == n
        assert model["fallback_share"] == pytest.approx(by_fallback / n, abs=1e-4)
        assert model["predictions_per_s"] == pytest.approx(n / (10.0 * (intervals - first) + 5), abs=0.01)


@pytest.mark.integration
def test_the_dashboard_shows_routes_redis_and_served_features(client: TestClient, store: OnlineWriter) -> None:
    store.latest(last, "u1", time.time_ns() // 1_000_000 - 2_000, [5.0, "FR"])  # u2 has none
    for _ in range(20):
        assert client.post("/v1/features", json={"service": "svc", "entities": [{"user_id": "u1"}, {"user_id": "u2"}],
                                                 "request": {"amount": 1.0}}).status_code == 200
    assert client.post("/v1/features", json={"service": "nope", "entities": [{"user_id": "u1"}]}).status_code == 404
    client.app.state.serving.history.snapshot()  # type: ignore[attr-defined]  # what the lifespan does every 10 s
    serving = client.get("/v1/dashboard").json()["serving"]
    routes = {r["name"]: r for r in serving["routes"]}
    assert set(routes) == {"POST /v1/features", REDIS_READ}, "the dashboard's own polling is not shown"
    features = routes["POST /v1/features"]
    assert features["requests"] == 21
    assert features["server_errors"] == 0
    assert 0 < features["p50_ms"] <= features["p99_ms"] < 2_500
    assert routes[REDIS_READ]["requests"] == 20
    [(_, p50, p99, per_s)] = features["series"]  # the one interval closed by the copy above
    assert p50 is not None
    assert p99 is not None
    assert per_s > 0
    assert "pid" in serving["scope"]
    served = {f["feature"]: f for f in serving["features"]}
    amount = served["last:amount"]
    assert amount["values"] == 40
    assert amount["share"]["present"] == 0.5
    assert sum(amount["share"].values()) == pytest.approx(1.0)
    assert 1 <= amount["age_p99_s"] <= 5, "u1's value is ~2 s old: in the (1 s, 5 s] age bucket"
    assert served["spend:count_1h"]["share"]["present"] + served["spend:count_1h"]["share"]["default"] == 1.0


def test_a_summary_read_while_the_loop_copies_the_tallies() -> None:
    """The dashboard route runs in a worker thread while the event loop's thread appends copies."""
    metrics = Metrics()
    metrics.observe_request("/v1/features", "POST", 200, 0.001)
    history = ServingHistory(metrics, bucket_s=1.0, window_s=5_000.0)
    for _ in range(2_000):
        history.snapshot()
    done = threading.Event()

    def copy_on() -> None:
        while not done.is_set():
            history.snapshot()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    thread = threading.Thread(target=copy_on)
    thread.start()
    try:
        for _ in range(10):
            assert history.summary()["routes"][0]["name"] == "POST /v1/features"
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(switch)
