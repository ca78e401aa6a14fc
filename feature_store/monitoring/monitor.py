"""`ServiceMonitor`: drift, quality and detector signals for one feature service (or model).

Feed it what serving answered (`observe`) and, once labels arrive, how wrong
it was (`observe_outcome`). It keeps the last `window` served values per
feature; `evaluate()` compares them with the training reference (PSI/KS),
runs the quality checks, updates Prometheus gauges and writes an alert when a
feature *enters* drift or a check starts failing (not again while it stays
so). River detectors watch each numeric feature, the predictions and the
error on every value; each signal is an alert. `on_alert` callbacks run for
every alert (e.g. to trigger a retraining run).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from feature_store.monitoring import metrics
from feature_store.monitoring.alerts import Alert, AlertLog
from feature_store.monitoring.detectors import DetectorSpec, StreamDetectors
from feature_store.monitoring.drift import DriftThresholds, FeatureDrift, feature_drift
from feature_store.monitoring.profile import FeatureProfile, profile_table
from feature_store.monitoring.quality import QualityIssue, QualityRule, check_quality

__all__ = ["ServiceMonitor", "load_profiles", "profiles_path", "save_profiles"]

_SEVERITY_ORDER = {"ok": 0, "insufficient": 0, "warn": 1, "drift": 2}


def profiles_path(data_dir: Path, service: str) -> Path:
    return Path(data_dir) / "monitoring" / "profiles" / f"{service}.json"


def save_profiles(path: Path, profiles: Mapping[str, FeatureProfile]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({k: p.to_dict() for k, p in profiles.items()}))
    tmp.replace(path)
    return path


def load_profiles(path: Path) -> dict[str, FeatureProfile]:
    data = orjson.loads(Path(path).read_bytes())
    return {k: FeatureProfile.from_dict(v) for k, v in data.items()}


class ServiceMonitor:
    """Monitoring state of one service; in-process, no I/O except the alert log."""

    def __init__(
        self,
        service: str,
        profiles: Mapping[str, FeatureProfile],
        *,
        alert_log: AlertLog | None = None,
        window: int = 2000,
        thresholds: DriftThresholds | None = None,
        rules: Mapping[str, QualityRule] | None = None,
        detector: DetectorSpec | None = None,
        stream_specs: dict[str, DetectorSpec] | None = None,
        watch_features: bool = True,
    ) -> None:
        self.service = service
        self.profiles = dict(profiles)
        self.alert_log = alert_log
        self.thresholds = thresholds or DriftThresholds()
        self.rules = dict(rules or {})
        self.detectors = StreamDetectors(detector, stream_specs)
        self.watch_features = watch_features
        self.window = window
        self.served: dict[str, deque[Any]] = {f: deque(maxlen=window) for f in self.profiles}
        self.observed = 0
        self.outcomes = 0
        self.on_alert: list[Callable[[Alert], None]] = []
        self._status: dict[str, str] = {}  # feature -> last drift status
        self._failing: set[tuple[str, str]] = set()  # (feature, check) failing at last evaluate
        self.last_drift: dict[str, FeatureDrift] = {}
        self.last_issues: list[QualityIssue] = []

    @classmethod
    def from_reference(cls, service: str, table: Any, features: list[str] | None = None,
                       **options: Any) -> ServiceMonitor:
        """Profile the reference (a training set: Arrow table or DataFrame) and watch those features."""
        return cls(service, profile_table(table, features), **options)

    def set_reference(self, profiles: Mapping[str, FeatureProfile]) -> None:
        """Replace the reference (e.g. once a bootstrap window is full); served windows restart."""
        self.profiles = dict(profiles)
        self.served = {f: deque(maxlen=self.window) for f in self.profiles}
        self._status.clear()
        self._failing.clear()

    # -- feeding
    def observe(self, features: Mapping[str, Any], prediction: float | None = None) -> list[Alert]:
        """Record one served vector (and its prediction); returns detector alerts it caused."""
        self.observed += 1
        alerts: list[Alert] = []
        for name, window in self.served.items():
            value = features.get(name)
            window.append(value)
            if (self.watch_features and self.profiles[name].kind == "numeric"
                    and isinstance(value, int | float) and not isinstance(value, bool)):
                alerts += self._detect(f"feature:{name}", float(value))
        if prediction is not None:
            alerts += self._detect("prediction", float(prediction))
        return alerts

    def observe_outcome(self, prediction: float, label: float, *, classification: bool = True) -> list[Alert]:
        """Record how wrong one prediction was once its label is known: 0/1 miss (classification) or |error|."""
        self.outcomes += 1
        error = float((prediction >= 0.5) != (label >= 0.5)) if classification else abs(label - prediction)
        return self._detect("error", error)

    def _detect(self, stream: str, value: float) -> list[Alert]:
        if not self.detectors.update(stream, value):
            return []
        metrics.STREAM_DRIFTS.labels(self.service, stream).inc()
        state = self.detectors.states[stream]
        return [self._alert(Alert(
            service=self.service, kind="stream_drift", subject=stream, value=value,
            message=f"{self.service}: the {stream} stream changed (detector signal after {state.seen} values); "
                    "compare recent traffic with the training reference and consider retraining",
            details={"seen": state.seen, "detector": self.detectors.specs.get(stream, self.detectors.default).kind},
        ))]

    def _alert(self, alert: Alert) -> Alert:
        metrics.ALERTS.labels(self.service, alert.kind).inc()
        if self.alert_log is not None:
            self.alert_log.append(alert)
        for callback in self.on_alert:
            callback(alert)
        return alert

    # -- checking
    def evaluate(self) -> list[Alert]:
        """Drift and quality of the current window vs the reference; alerts on newly entered bad states."""
        alerts: list[Alert] = []
        issues: list[QualityIssue] = []
        for name, profile in self.profiles.items():
            values = list(self.served[name])
            result = feature_drift(profile, values, self.thresholds)
            self.last_drift[name] = result
            metrics.FEATURE_PSI.labels(self.service, name).set(result.psi)
            metrics.FEATURE_NULL_RATE.labels(self.service, name).set(result.served_null_rate)
            if result.ks_statistic is not None:
                metrics.FEATURE_KS.labels(self.service, name).set(result.ks_statistic)
            previous = self._status.get(name, "ok")
            self._status[name] = result.status
            if result.status == "drift" and previous != "drift":
                alerts.append(self._alert(Alert(
                    service=self.service, kind="feature_drift", subject=name, value=result.psi,
                    limit=self.thresholds.psi_drift, severity="critical",
                    message=f"{self.service}: served {name} drifted from the training reference "
                            f"(PSI {result.psi:.3f}, KS {result.ks_statistic}); retrain or check the source",
                    details=result.to_dict(),
                )))
            issues += check_quality(name, values, profile=profile, rule=self.rules.get(name))
        failing: set[tuple[str, str]] = {(i.feature, i.check) for i in issues}
        for issue in issues:
            if (issue.feature, issue.check) not in self._failing:
                alerts.append(self._alert(Alert(
                    service=self.service, kind="quality", subject=issue.feature, value=issue.observed,
                    limit=issue.limit, message=issue.message, details={"check": issue.check},
                )))
        self._failing = failing
        self.last_issues = issues
        return alerts

    def report(self, *, evaluate: bool = True, alerts: int = 20) -> dict[str, Any]:
        """A JSON-able summary: per-feature drift and quality, detector streams, recent alerts, overall status."""
        if evaluate:
            self.evaluate()
        worst = max((_SEVERITY_ORDER[d.status] for d in self.last_drift.values()), default=0)
        if self.last_issues:
            worst = max(worst, 1)
        recent = self.alert_log.read(service=self.service, limit=alerts) if self.alert_log else []
        return {
            "service": self.service,
            "status": ("ok", "warn", "drift")[worst],
            "observed": self.observed,
            "outcomes": self.outcomes,
            "features": {
                name: {**d.to_dict(), "issues": [i.to_dict() for i in self.last_issues if i.feature == name]}
                for name, d in self.last_drift.items()
            },
            "streams": self.detectors.summary(),
            "alerts": [a.to_dict() for a in recent],
        }
