"""Quality checks, river detectors, the alert log and the service monitor that ties them together."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

from feature_store.errors import DefinitionError
from feature_store.monitoring import (
    Alert,
    AlertLog,
    DetectorSpec,
    QualityRule,
    ServiceMonitor,
    StreamDetectors,
    check_quality,
    load_profiles,
    profile_column,
    save_profiles,
)


def test_null_rate_check_uses_profile_plus_slack() -> None:
    profile = profile_column("x", [1.0] * 90 + [None] * 10)  # 10% nulls in training
    assert check_quality("x", [1.0] * 85 + [None] * 15, profile=profile) == []  # 15% <= 10% + 5%
    issues = check_quality("x", [1.0] * 70 + [None] * 30, profile=profile)
    assert [i.check for i in issues] == ["null_rate"]
    assert issues[0].observed == pytest.approx(0.3)
    assert "x" in issues[0].message


def test_range_check_declared_bounds_inclusive() -> None:
    rule = QualityRule(feature="age", min=18, max=90, max_out_of_range_rate=0.0)
    assert check_quality("age", [18, 90] * 20, rule=rule) == []
    issues = check_quality("age", [18] * 39 + [91], rule=rule)
    assert [i.check for i in issues] == ["range"]
    assert issues[0].observed == pytest.approx(1 / 40)


def test_range_check_from_profile_and_too_few_values() -> None:
    profile = profile_column("amount", [float(i) for i in range(101)])  # 0..100, slack 50 -> [-50, 150]
    assert check_quality("amount", [140.0] * 30, profile=profile) == []
    assert [i.check for i in check_quality("amount", [160.0] * 30, profile=profile)] == ["range"]
    assert check_quality("amount", [160.0] * 5, profile=profile) == []  # below min_count: no verdict


def test_detectors_signal_a_mean_shift_not_noise() -> None:
    rng = random.Random(5)
    for spec in (DetectorSpec(kind="adwin"), DetectorSpec(kind="page_hinkley", params={"threshold": 20})):
        detectors = StreamDetectors(spec)
        quiet = sum(detectors.update("s", rng.gauss(0, 0.1)) for _ in range(1000))
        assert quiet == 0, spec
        loud = sum(detectors.update("s", rng.gauss(1.0, 0.1)) for _ in range(300))
        assert loud >= 1, spec
        assert detectors.summary()["s"]["drifts"] == loud


def test_detectors_survive_pickle_with_their_state() -> None:
    detectors = StreamDetectors()
    for i in range(500):
        detectors.update("a", float(i % 2))
    clone = pickle.loads(pickle.dumps(detectors))
    assert clone.summary() == detectors.summary()
    values = [float(i % 3 == 0) * 5 for i in range(400)]
    assert [clone.update("a", v) for v in values] == [detectors.update("a", v) for v in values]


def test_unknown_detector_kind() -> None:
    with pytest.raises(DefinitionError, match="adwin"):
        DetectorSpec(kind="cusum")  # type: ignore[arg-type]


def test_alert_log_appends_filters_and_skips_torn_lines(tmp_path: Path) -> None:
    log = AlertLog(tmp_path / "m" / "alerts.jsonl")
    assert log.read() == []
    first = log.append(Alert(service="s1", kind="quality", subject="x", message="m1", time_ms=1))
    log.append(Alert(service="s2", kind="feature_drift", subject="y", message="m2", time_ms=2))
    with log.path.open("ab") as f:
        f.write(b'{"service": "s1", "kind"')  # a writer killed mid-line
    log.append(Alert(service="s1", kind="feature_drift", subject="z", message="m3", time_ms=3))
    # the torn fragment and the next alert share one line, which is skipped; later alerts read fine
    assert [a.message for a in log.read()] == ["m1", "m2"]
    log.append(Alert(service="s1", kind="retrain", subject="z", message="m4", time_ms=4))
    assert [a.message for a in log.read(service="s1")] == ["m1", "m4"]
    assert log.read(service="s1")[0] == first
    assert [a.message for a in log.read(kind="feature_drift")] == ["m2"]
    assert [a.message for a in log.read(since_ms=2, limit=1)] == ["m4"]


def _monitor(tmp_path: Path) -> ServiceMonitor:
    rng = random.Random(9)
    profiles = {"x": profile_column("x", [rng.gauss(0, 1) for _ in range(3000)]),
                "c": profile_column("c", ["a", "b"] * 500)}
    return ServiceMonitor("svc", profiles, alert_log=AlertLog(tmp_path / "alerts.jsonl"), window=500)


def test_monitor_alerts_once_when_a_feature_enters_drift(tmp_path: Path) -> None:
    rng = random.Random(1)
    monitor = _monitor(tmp_path)
    for _ in range(500):
        monitor.observe({"x": rng.gauss(0, 1), "c": rng.choice("ab")}, prediction=0.2)
    assert monitor.evaluate() == []
    assert monitor.report()["status"] == "ok"
    fired: list[Alert] = []
    monitor.on_alert.append(fired.append)
    for _ in range(500):
        monitor.observe({"x": rng.gauss(2, 1), "c": rng.choice("ab")}, prediction=0.2)
    alerts = monitor.evaluate()
    assert [(a.kind, a.subject) for a in alerts] == [("feature_drift", "x")]
    assert monitor.evaluate() == []  # still drifted: no second alert
    report = monitor.report()
    assert report["status"] == "drift"
    assert report["features"]["x"]["status"] == "drift"
    assert report["features"]["c"]["status"] == "ok"
    assert report["streams"]["feature:x"]["drifts"] >= 1  # ADWIN saw the shift as it happened
    kinds = {a["kind"] for a in report["alerts"]}
    assert kinds == {"feature_drift", "stream_drift"}
    assert any(a.kind == "stream_drift" and a.subject == "feature:x" for a in fired)


def test_monitor_quality_alerts_and_error_stream(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path)
    for _ in range(100):
        monitor.observe({"x": 0.0, "c": None})
    alerts = monitor.evaluate()
    assert ("quality", "c") in {(a.kind, a.subject) for a in alerts}
    assert all(a.subject != "c" for a in monitor.evaluate())  # not repeated while failing
    signals = [monitor.observe_outcome(0.1, 0.0) for _ in range(500)]
    signals += [monitor.observe_outcome(0.1, 1.0) for _ in range(300)]
    assert any(any(a.subject == "error" for a in batch) for batch in signals)
    assert monitor.outcomes == 800


def test_monitor_pickles_and_profiles_round_trip(tmp_path: Path) -> None:
    monitor = _monitor(tmp_path)
    for i in range(50):
        monitor.observe({"x": float(i), "c": "a"}, prediction=0.5)
    clone = pickle.loads(pickle.dumps(monitor))
    assert clone.report(alerts=0)["features"] == monitor.report(alerts=0)["features"]
    path = save_profiles(tmp_path / "p" / "svc.json", monitor.profiles)
    assert load_profiles(path) == monitor.profiles


def test_monitor_from_reference_table() -> None:
    import pyarrow as pa

    table = pa.table({"x": [1.0, 2.0, 3.0], "c": ["a", "b", None], "label": [0, 1, 0]})
    monitor = ServiceMonitor.from_reference("svc", table, ["x", "c"])
    assert set(monitor.profiles) == {"x", "c"}
    assert monitor.profiles["c"].kind == "categorical"
