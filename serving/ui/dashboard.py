"""The dashboard's one JSON document: what an operator looks at on `/ui`.

Built from what the stores already hold, so the page needs no state of its
own: definitions and versions from the repo/registry, per-source counts,
throughput and freshness from the offline event log (every consumed event is
logged with its status and ingest time), drift and models from their
registries when those are present, the stream workers' status reports
(`feature_store.worker_reports`), and what the answering API process
served recently: latency per route, served features' statuses and ages,
predictions per model version (`serving.history`). A part that cannot be read is listed in `missing` with
the reason instead of failing the page.

Freshness of an applied event is `ingest_time - event_time`: how old an event
is when it becomes servable. The chart shows its median and maximum per
bucket of ingest time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from feature_store.definitions import BatchSource, StreamSource
from feature_store.offline.engine import sql_list
from feature_store.offline.layout import batch_source_glob, log_files
from feature_store.repo import FeatureRepo

__all__ = ["Provider", "build_summary", "source_stats"]

WINDOW_MS = 15 * 60_000
"""History shown in the charts."""
BUCKET_MS = 10_000
RATE_MS = 60_000
"""Throughput is averaged over the last minute of ingest time."""

Provider = Callable[[], Any]
"""A zero-argument callable returning one optional section (models, drift, workers, serving); may raise."""


def build_summary(
    repo: FeatureRepo | None,
    data_dir: Path,
    *,
    versions: Mapping[str, Any] | None = None,
    models: Provider | None = None,
    drift: Provider | None = None,
    workers: Provider | None = None,
    serving: Provider | None = None,
    now_ms: int | None = None,
    missing: Sequence[str] = (),
) -> dict[str, Any]:
    """The `/v1/dashboard` document. `versions` maps definition names to registry versions."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    gaps = list(missing)
    doc: dict[str, Any] = {"generated_at": now, "views": [], "services": [], "sources": [], "models": [],
                           "drift": [], "workers": [], "serving": None, "missing": gaps}
    _optional(doc, "serving", serving)  # what the API served and the workers run: shown before any apply too
    _optional(doc, "workers", workers)
    if repo is None:
        gaps.append("feature registry: no repo applied yet (run `featurestream apply`)")
        return doc
    versions = versions or {}
    sources: dict[str, dict[str, Any]] = {}
    for name, source in sorted(repo.sources.items()):
        try:
            sources[name] = source_stats(source, data_dir, now)
        except Exception as exc:  # a half-written or foreign file must not take the page down
            sources[name] = {"name": name, "kind": _kind(source), "error": _one_line(exc)}
            gaps.append(f"offline log of {name}: {_one_line(exc)}")
    doc["sources"] = list(sources.values())
    for name, view in sorted(repo.views.items()):
        stats = sources.get(view.source.name, {})
        doc["views"].append({
            "name": name,
            "entity": view.entity.name,
            "source": view.source.name,
            "kind": "windowed" if view.is_windowed else "latest",
            "features": view.feature_names,
            "fingerprint": view.fingerprint[:12],
            "version": versions.get(name),
            "online": view.online,
            "offline": view.offline,
            "freshness_s": stats.get("freshness_s"),
            "events_per_s": stats.get("events_per_s"),
            "last_event_time": stats.get("last_event_time"),
        })
    for name, service in sorted(repo.services.items()):
        doc["services"].append({
            "name": name,
            "features": list(service.feature_refs),
            "fingerprint": service.fingerprint[:12],
            "version": versions.get(name),
        })
    _optional(doc, "models", models)
    _optional(doc, "drift", drift)
    return doc


def _optional(doc: dict[str, Any], key: str, provider: Provider | None) -> None:
    """Fill an optional section; one that fails is named in `missing`, it never fails the page."""
    if provider is None:
        return
    try:
        doc[key] = provider()
    except Exception as exc:
        doc["missing"].append(f"{key}: {_one_line(exc)}")


def source_stats(source: StreamSource | BatchSource, data_dir: Path, now_ms: int) -> dict[str, Any]:
    """Counts by status, throughput, freshness now and over time, for one source."""
    import duckdb

    out: dict[str, Any] = {"name": source.name, "kind": _kind(source), "applied": 0, "late": 0, "invalid": 0,
                           "events_per_s": None, "freshness_s": None, "last_event_time": None, "series": []}
    con = duckdb.connect(":memory:")
    try:
        if isinstance(source, BatchSource):
            glob = batch_source_glob(data_dir, source.path)
            if not _any_file(glob):
                return out
            column = f'"{source.event_time}"'
            row = con.execute(  # rows dated in the future are not live yet
                f"SELECT count(*), max({column}) FILTER (WHERE {column} <= ?) FROM read_parquet(?)", [now_ms, glob]
            ).fetchone()
            if row is not None:
                out["applied"] = int(row[0])
                out["last_event_time"] = _ms(row[1])
                if out["last_event_time"] is not None:
                    out["freshness_s"] = (now_ms - out["last_event_time"]) / 1000
            return out
        out["topic"] = source.topic
        out["dlq_topic"] = source.dlq_topic
        since = now_ms - WINDOW_MS
        files = log_files(data_dir, source.name, since_day=min(_day(since - 86_400_000), _day(now_ms)))
        if not files:
            return out
        con.execute(f"CREATE TEMP VIEW log AS SELECT * FROM read_parquet({sql_list(files)}, union_by_name := true)")
        for status, count in con.execute("SELECT __status, count(*) FROM log GROUP BY 1").fetchall():
            if status in ("applied", "late", "invalid"):
                out[status] = int(count)
        newest = con.execute(
            "SELECT max(__event_time), count(*) FILTER (WHERE __ingest_time > ?) FROM log "
            "WHERE __status = 'applied'", [now_ms - RATE_MS]
        ).fetchone()
        if newest is not None and newest[0] is not None:
            out["last_event_time"] = int(newest[0])
            out["freshness_s"] = (now_ms - int(newest[0])) / 1000
            out["events_per_s"] = int(newest[1]) / (RATE_MS / 1000)
        out["series"] = [
            [int(bucket) / 1000, float(p50) / 1000, float(worst) / 1000, int(n) / (BUCKET_MS / 1000)]
            for bucket, p50, worst, n in con.execute(
                f"SELECT __ingest_time // {BUCKET_MS} * {BUCKET_MS} AS b, median(__ingest_time - __event_time), "
                f"max(__ingest_time - __event_time), count(*) FROM log "
                f"WHERE __status = 'applied' AND __ingest_time >= ? GROUP BY b ORDER BY b",
                [since],
            ).fetchall()
        ]
        return out
    finally:
        con.close()


def _kind(source: StreamSource | BatchSource) -> str:
    return "stream" if isinstance(source, StreamSource) else "batch"


def _any_file(glob: str) -> bool:
    path = Path(glob)
    anchor = next((p for p in path.parents if "*" not in str(p)), Path("/"))
    return any(anchor.glob(str(path.relative_to(anchor))))


def _day(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).strftime("%Y-%m-%d")


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
