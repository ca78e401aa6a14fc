"""Training run records: what was trained, on what, how well and how long, in SQLite.

`runs.sqlite` sits next to the definitions registry (and `models.sqlite`).
A run is written once when it ends (batch) or per snapshot (online); it is
never updated. `compare` lines runs up side by side: one row per field or
metric, one column per run.
"""

from __future__ import annotations

import functools
import sqlite3
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from feature_store.errors import UnknownFeatureError
from feature_store.sqlite_store import open_store
from schemas import now_ms

if TYPE_CHECKING:
    from feature_store.settings import Settings

__all__ = ["RunStore", "TrainingRun", "code_version"]

RunKind = Literal["batch", "online_snapshot"]
RunStatus = Literal["accepted", "rejected", "failed", "recorded"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, model TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL, model_version INTEGER, started_at INTEGER NOT NULL, duration_s REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_model ON runs (model, started_at);
"""


@functools.lru_cache(maxsize=1)
def code_version() -> str | None:
    """The git commit of the code doing the training (with `+dirty` for local changes), None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha or None



@dataclass(frozen=True, kw_only=True)
class TrainingRun:
    """One training run (batch fit or online snapshot) and its lineage."""

    model: str
    kind: RunKind
    status: RunStatus
    reason: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    baseline_metrics: Mapping[str, float] = field(default_factory=dict)
    feature_service: str | None = None
    service_fingerprint: str | None = None
    features: tuple[str, ...] = ()
    data_refs: Mapping[str, Any] = field(default_factory=dict)  # training set path, label offsets, ...
    time_range: tuple[int, int] | None = None  # event-time range of the data (epoch ms, inclusive)
    model_version: int | None = None  # registry version; None when rejected or failed
    code_version: str | None = None
    started_at: int = field(default_factory=now_ms)
    duration_s: float = 0.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out.update(params=dict(self.params), metrics=dict(self.metrics), baseline_metrics=dict(self.baseline_metrics),
                   features=list(self.features), data_refs=dict(self.data_refs),
                   time_range=list(self.time_range) if self.time_range else None)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRun:
        d = dict(data)
        d["features"] = tuple(d.get("features") or ())
        d["time_range"] = tuple(d["time_range"]) if d.get("time_range") else None
        return cls(**d)


class RunStore:
    """Append-only run records of one deployment."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def from_settings(cls, settings: Settings) -> RunStore:
        return cls(Path(settings.registry).parent / "runs.sqlite")

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return open_store(self.db_path, "run store", rows=False)

    def record(self, run: TrainingRun) -> TrainingRun:
        with self._connect() as db:
            db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?)",
                       (run.run_id, run.model, run.kind, run.status, run.reason, run.model_version, run.started_at,
                        run.duration_s, orjson.dumps(run.to_dict()).decode()))
        return run

    def get(self, run_id: str) -> TrainingRun:
        with self._connect() as db:
            row = db.execute("SELECT body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnknownFeatureError(f"no training run {run_id!r}; list runs with `featurestream runs list`")
        return TrainingRun.from_dict(orjson.loads(row[0]))

    def list(self, model: str | None = None, *, status: str | None = None, limit: int = 100) -> list[TrainingRun]:
        """Newest first."""
        sql, args = "SELECT body FROM runs WHERE 1=1", []
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(sql, (*args, limit)).fetchall()
        return [TrainingRun.from_dict(orjson.loads(r[0])) for r in rows]

    def compare(self, run_ids: Sequence[str]) -> dict[str, Any]:
        """Side by side: `{"runs": [ids], "rows": [{"field": name, "values": [per run]}]}`; metrics as `metric.x`."""
        runs = [self.get(r) for r in run_ids]
        fields = ["model", "kind", "status", "reason", "model_version", "feature_service", "service_fingerprint",
                  "code_version", "time_range", "duration_s", "started_at"]
        rows: list[dict[str, Any]] = [{"field": f, "values": [r.to_dict()[f] for r in runs]} for f in fields]
        for prefix, attr in (("metric", "metrics"), ("baseline", "baseline_metrics"), ("param", "params"),
                             ("data", "data_refs")):
            names = sorted({k for r in runs for k in getattr(r, attr)})
            rows += [{"field": f"{prefix}.{n}", "values": [getattr(r, attr).get(n) for r in runs]} for n in names]
        return {"runs": [r.run_id for r in runs], "rows": rows}
