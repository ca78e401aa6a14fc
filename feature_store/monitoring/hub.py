"""`MonitorHub`: one `ServiceMonitor` per feature service, fed from the prediction log, published to Redis.

The stream worker hands it every prediction-log record (`observe`) and every
joined label (`observe_outcome`); `publish()` evaluates each monitor and
writes its report as JSON under `<prefix>:v1:mon:<service>`, which serving's
`GET /v1/monitoring/{service}` reads. Alerts go to the shared alert log.

The reference of a service is the profile file the batch trainer saved
(`<data_dir>/monitoring/profiles/<service>.json`). Without one, the first
`bootstrap` served vectors become the reference (`reference: "bootstrap"` in
the report), so drift is at least watched relative to the start of traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from feature_store.monitoring.alerts import Alert, AlertLog, alert_log_path
from feature_store.monitoring.monitor import ServiceMonitor, load_profiles, profiles_path
from feature_store.monitoring.profile import profile_table

__all__ = ["MonitorHub"]


class MonitorHub:
    """Monitors by service; in-process state, Redis only for publishing reports."""

    def __init__(self, data_dir: Path, *, window: int = 2000, bootstrap: int = 500,
                 on_alert: Callable[[Alert], None] | None = None, **monitor_options: Any) -> None:
        self.data_dir = Path(data_dir)
        self.alert_log = AlertLog(alert_log_path(self.data_dir))
        self.window = window
        self.bootstrap = bootstrap
        self.on_alert = on_alert
        self.options = monitor_options
        self.monitors: dict[str, ServiceMonitor] = {}
        self.references: dict[str, str] = {}
        self._warmup: dict[str, list[dict[str, Any]]] = {}

    def _monitor(self, service: str, features: Mapping[str, Any]) -> ServiceMonitor:
        monitor = self.monitors.get(service)
        if monitor is None:
            path = profiles_path(self.data_dir, service)
            profiles = load_profiles(path) if path.exists() else {}
            self.references[service] = str(path) if profiles else "bootstrap (warming up)"
            monitor = ServiceMonitor(service, profiles, alert_log=self.alert_log, window=self.window, **self.options)
            if self.on_alert is not None:
                monitor.on_alert.append(self.on_alert)
            self.monitors[service] = monitor
            if not profiles:
                self._warmup[service] = []
        rows = self._warmup.get(service)
        if rows is not None:  # no saved reference: the first `bootstrap` vectors become it
            rows.append(dict(features))
            if len(rows) >= self.bootstrap:
                import pyarrow as pa

                names = sorted({k for r in rows for k in r})
                table = pa.table({n: pa.array([r.get(n) for r in rows], from_pandas=True) for n in names})
                monitor.set_reference(profile_table(table))
                self.references[service] = "bootstrap"
                del self._warmup[service]
        return monitor

    def observe(self, record: Mapping[str, Any]) -> list[Alert]:
        """One prediction-log record (features as logged, JSON text or dict)."""
        service = str(record.get("service") or record["model"])
        features = record["features"]
        values = orjson.loads(features) if isinstance(features, str | bytes) else dict(features)
        return self._monitor(service, values).observe(values, prediction=float(record["prediction"]))

    def observe_outcome(self, service: str, prediction: float, label: float) -> list[Alert]:
        monitor = self.monitors.get(service)
        return monitor.observe_outcome(prediction, label) if monitor is not None else []

    def reports(self) -> dict[str, dict[str, Any]]:
        return {service: {**m.report(), "reference": self.references.get(service)}
                for service, m in self.monitors.items()}

    async def publish(self, redis: Any, key: Callable[[str], str]) -> None:
        """Evaluate every monitor and write its report to `key(service)`."""
        reports = self.reports()
        if not reports:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for service, report in reports.items():
                pipe.set(key(service), orjson.dumps(report, option=orjson.OPT_NON_STR_KEYS))
            await pipe.execute()
