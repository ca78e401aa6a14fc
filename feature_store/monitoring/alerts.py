"""The alert log: append-only JSON lines under the data directory, one alert per line.

One `os.write` per alert on a file opened with O_APPEND, so several processes
(server, workers) can append to the same log without interleaving lines.
Reading tolerates a torn last line (a writer killed mid-write) by skipping it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog

__all__ = ["Alert", "AlertLog", "alert_log_path"]

_log = structlog.get_logger(__name__)
Severity = Literal["info", "warning", "critical"]


def alert_log_path(data_dir: Path) -> Path:
    return Path(data_dir) / "monitoring" / "alerts.jsonl"


@dataclass(frozen=True, kw_only=True)
class Alert:
    """Something an operator should look at: drift, a quality issue, a detector signal."""

    service: str  # feature service (or model) the alert is about
    kind: str  # "feature_drift", "quality", "stream_drift", "retrain", ...
    subject: str  # the feature or stream, e.g. "user_spend:amount_sum_1h" or "prediction"
    message: str
    severity: Severity = "warning"
    value: float | None = None
    limit: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    time_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    alert_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class AlertLog:
    """Append and read alerts in one JSONL file (created on first append)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, alert: Alert) -> Alert:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(alert.to_dict()) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        _log.warning("alert", service=alert.service, kind=alert.kind, subject=alert.subject,
                     severity=alert.severity, value=alert.value, limit=alert.limit)
        return alert

    def _lines(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            for line in f:
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn line from a killed writer

    def read(self, *, service: str | None = None, kind: str | None = None, since_ms: int | None = None,
             limit: int | None = None) -> list[Alert]:
        """Alerts oldest first, filtered; `limit` keeps the newest `limit`."""
        found = [Alert(**row) for row in self._lines()
                 if (service is None or row.get("service") == service)
                 and (kind is None or row.get("kind") == kind)
                 and (since_ms is None or row.get("time_ms", 0) >= since_ms)]
        return found[-limit:] if limit is not None else found
