"""Online/offline consistency: was what we served what the batch path computes?

The contract says the online value of a feature for `(entity, t)` equals the
offline value for the same applied events. This module checks it on real
traffic: it samples served predictions from the prediction log in the offline
store (each carries the exact feature values the model saw, the entity keys
and `served_at`), recomputes the same features at `t = served_at` with the
batch path's point-in-time join, and compares value by value (floats within
1e-9 relative or 1e-9 absolute). The result is a match rate per feature with a
few mismatching examples, a Prometheus gauge, and a pass/fail against a
threshold so it can gate a deploy.

Only features that come from a feature view are checked: request fields and
derived features are not in the offline store. Fallback answers are skipped
(their features did not come from the online store).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Gauge

from feature_store.definitions import StreamSource
from feature_store.errors import FeatureStoreError
from feature_store.offline.layout import log_files
from feature_store.repo import FeatureRepo
from schemas import PREDICTION_LOG

__all__ = [
    "PREDICTION_LOG_SOURCE",
    "PREDICTION_LOG_SOURCES",
    "PREDICTION_LOG_TOPIC",
    "ConsistencyError",
    "ConsistencyReport",
    "FeatureResult",
    "Mismatch",
    "Recompute",
    "ServedRow",
    "batch_recompute",
    "check",
    "checkable_features",
    "compare",
    "export_gauge",
    "feature_ref",
    "find_prediction_log",
    "load_served",
    "prediction_log_source",
    "values_match",
    "with_prediction_log",
]

REL_TOL = 1e-9
ABS_TOL = 1e-9
PREDICTION_LOG_SOURCE = "prediction_log"
"""The stream source the worker logs the prediction log topic as: `<data_dir>/log/prediction_log/`."""
PREDICTION_LOG_TOPIC = "_predictions"
PREDICTION_LOG_SOURCES = (PREDICTION_LOG_SOURCE, PREDICTION_LOG_TOPIC, "predictions")
"""Names the prediction log may be logged under in `<data_dir>/log/`."""


class ConsistencyError(FeatureStoreError):
    """The check cannot run (no prediction log, no batch path); the message says what to do."""


@dataclass(frozen=True, slots=True)
class ServedRow:
    """One served prediction: who, when, and the inputs the model saw.

    `features` maps input names to values: 'view__feature' as serving logs
    model inputs (or 'view:feature'), plus request fields and derived values.
    """

    request_id: str
    served_at: int
    entity_keys: Mapping[str, Any]
    features: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A served value that the batch path does not reproduce."""

    feature: str
    request_id: str
    entity_keys: Mapping[str, Any]
    served_at: int
    served: Any
    recomputed: Any


@dataclass
class FeatureResult:
    """Match counts of one feature over the sample."""

    feature: str
    compared: int = 0
    matched: int = 0
    examples: list[Mismatch] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Share of compared values that matched (1.0 when nothing was compared)."""
        return self.matched / self.compared if self.compared else 1.0


@dataclass
class ConsistencyReport:
    """Per-feature results of one check; `rate` is the overall share of matching values."""

    rows: int
    features: dict[str, FeatureResult]
    skipped: list[str] = field(default_factory=list)

    @property
    def compared(self) -> int:
        return sum(r.compared for r in self.features.values())

    @property
    def matched(self) -> int:
        return sum(r.matched for r in self.features.values())

    @property
    def rate(self) -> float:
        return self.matched / self.compared if self.compared else 1.0

    def passed(self, threshold: float) -> bool:
        """True when there was something to compare and every feature matches at least `threshold`."""
        return self.compared > 0 and all(r.rate >= threshold for r in self.features.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "compared": self.compared,
            "matched": self.matched,
            "rate": self.rate,
            "skipped": self.skipped,
            "features": {
                name: {
                    "compared": r.compared,
                    "matched": r.matched,
                    "rate": r.rate,
                    "examples": [
                        {"request_id": m.request_id, "entity_keys": dict(m.entity_keys), "served_at": m.served_at,
                         "served": m.served, "recomputed": m.recomputed}
                        for m in r.examples
                    ],
                }
                for name, r in sorted(self.features.items())
            },
        }


Recompute = Callable[[Sequence[str], Sequence[ServedRow]], Sequence[Mapping[str, Any]]]
"""Batch recomputation: (feature refs, rows) -> per row, 'view:feature' -> value at `row.served_at`."""


def values_match(served: Any, recomputed: Any, *, rel: float = REL_TOL, abs_tol: float = ABS_TOL) -> bool:
    """Equal, or both numbers within `rel` relative / `abs_tol` absolute; NaN matches NaN, None only None.

    bools are compared as values, not as numbers (True never matches 1.0).
    """
    if served is None or recomputed is None:
        return served is None and recomputed is None
    if isinstance(served, bool) or isinstance(recomputed, bool):
        return type(served) is type(recomputed) and served == recomputed
    if isinstance(served, int | float) and isinstance(recomputed, int | float):
        a, b = float(served), float(recomputed)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)
    return bool(served == recomputed)


def compare(
    rows: Sequence[ServedRow],
    recomputed: Sequence[Mapping[str, Any]],
    features: Sequence[str],
    *,
    max_examples: int = 3,
    skipped: Sequence[str] = (),
) -> ConsistencyReport:
    """Compare served and recomputed values of `features`, row by row (same order, same length)."""
    if len(rows) != len(recomputed):
        raise ConsistencyError(
            f"the batch path returned {len(recomputed)} rows for {len(rows)} sampled predictions; "
            "it must answer one row per (entity, t) in order"
        )
    results = {name: FeatureResult(name) for name in features}
    for row, again in zip(rows, recomputed, strict=True):
        for name in features:
            if name not in row.features:
                continue
            result = results[name]
            result.compared += 1
            served, value = row.features[name], again.get(name)
            if values_match(served, value):
                result.matched += 1
            elif len(result.examples) < max_examples:
                result.examples.append(Mismatch(name, row.request_id, row.entity_keys, row.served_at, served, value))
    return ConsistencyReport(rows=len(rows), features=results, skipped=sorted(skipped))


def feature_ref(repo: FeatureRepo, name: str) -> str | None:
    """The 'view:feature' a served input name stands for ('view:feature' or the model input 'view__feature')."""
    for sep in (":", "__"):
        view_name, found, feature = name.partition(sep)
        view = repo.views.get(view_name)
        if found and view is not None and view.offline and feature in view.feature_names:
            return f"{view_name}:{feature}"
    return None


def checkable_features(repo: FeatureRepo, rows: Sequence[ServedRow]) -> tuple[list[ServedRow], list[str], list[str]]:
    """Rows with feature inputs renamed to 'view:feature', the refs to check, and the skipped input names."""
    names = sorted({name for row in rows for name in row.features})
    refs = {name: feature_ref(repo, name) for name in names}
    skipped = [name for name, ref in refs.items() if ref is None]
    renamed = [
        ServedRow(row.request_id, row.served_at, row.entity_keys,
                  {ref: value for name, value in row.features.items() if (ref := refs[name]) is not None})
        for row in rows
    ]
    return renamed, sorted({ref for ref in refs.values() if ref is not None}), skipped


# ---------------------------------------------------------------- the prediction log
def prediction_log_source(partitions: int, topic: str = PREDICTION_LOG_TOPIC) -> StreamSource:
    """The prediction log topic as a stream source without views: the worker validates and logs it offline.

    `partitions` must match the topic's (serving creates it with `Settings.partitions`).
    """
    return StreamSource(name=PREDICTION_LOG_SOURCE, schema=PREDICTION_LOG, event_time="served_at",
                        key="request_id", topic=topic, partitions=partitions,
                        description="Served predictions, logged for consistency checks and label joins")


def with_prediction_log(repo: FeatureRepo, partitions: int, topic: str = PREDICTION_LOG_TOPIC) -> FeatureRepo:
    """`repo` plus the prediction log source, for the worker that appends it to the offline store."""
    if PREDICTION_LOG_SOURCE in repo.sources:
        return repo
    source = prediction_log_source(partitions, topic)
    return FeatureRepo(entities=repo.entities, sources={**repo.sources, source.name: source}, views=repo.views,
                       services=repo.services)


def find_prediction_log(data_dir: Path) -> list[str]:
    """The Parquet files of the prediction log in the offline store, or a ConsistencyError saying it is missing."""
    for name in PREDICTION_LOG_SOURCES:
        files = log_files(data_dir, name)
        if files:
            return files
    raise ConsistencyError(
        f"no prediction log under {data_dir / 'log'} (looked for {', '.join(PREDICTION_LOG_SOURCES)}); "
        "serve some predictions with the worker running, or pass --predictions GLOB"
    )


def load_served(glob: str | list[str], *, sample: int, seed: int = 0, model: str | None = None) -> list[ServedRow]:
    """Up to `sample` served predictions (not fallbacks) from the Parquet files at `glob` (or listed),
    reproducibly sampled."""
    import duckdb

    where = ["NOT coalesce(fallback, false)"]
    params: list[Any] = [glob]
    if model is not None:
        where.append("model = ?")
        params.append(model)
    con = duckdb.connect(":memory:")
    try:
        columns = {row[0] for row in con.execute(
            "DESCRIBE SELECT * FROM read_parquet(?, union_by_name := true)", [glob]).fetchall()}
        if "__status" in columns:  # logged by the worker: skip records it refused
            where.append("coalesce(__status, 'applied') <> 'invalid'")
        rows = con.execute(
            f"SELECT request_id, served_at, entity_keys, features FROM read_parquet(?, union_by_name := true) "
            # a hash of (request id, seed) orders the sample: the same seed draws the same rows, on any threads
            f"WHERE {' AND '.join(where)} ORDER BY hash(request_id, {int(seed)}), request_id LIMIT {int(sample)}",
            params,
        ).fetchall()
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        where_from = glob if isinstance(glob, str) else f"{len(glob)} files under {Path(glob[0]).parent.parent}"
        raise ConsistencyError(f"cannot read the prediction log {where_from!r}: {first}") from None
    finally:
        con.close()
    out = []
    for request_id, served_at, entity_keys, features in rows:
        out.append(ServedRow(str(request_id), int(served_at), orjson.loads(entity_keys), orjson.loads(features)))
    out.sort(key=lambda r: (r.served_at, r.request_id))
    return out


# ---------------------------------------------------------------- the gauge
_GAUGES: dict[int, Gauge] = {}


def export_gauge(report: ConsistencyReport, registry: CollectorRegistry | None = None) -> Gauge:
    """Set `featurestream_consistency_match_ratio{feature}` (and `feature="*"` overall) from a report.

    Serving calls this after a check (e.g. on a schedule); the default registry
    is the process's, which `/metrics` exposes.
    """
    from prometheus_client import REGISTRY

    target = registry if registry is not None else REGISTRY
    gauge = _GAUGES.get(id(target))
    if gauge is None:
        gauge = Gauge(
            "featurestream_consistency_match_ratio",
            "Share of sampled served feature values that the batch path reproduces (1.0 = consistent).",
            ["feature"],
            registry=target,
        )
        _GAUGES[id(target)] = gauge
    for name, result in report.features.items():
        gauge.labels(feature=name).set(result.rate)
    gauge.labels(feature="*").set(report.rate)
    return gauge


# ---------------------------------------------------------------- the whole check
def check(
    repo: FeatureRepo,
    rows: Sequence[ServedRow],
    recompute: Recompute,
    *,
    max_examples: int = 3,
) -> ConsistencyReport:
    """Recompute the checkable features of `rows` with the batch path and compare them with what was served."""
    renamed, features, skipped = checkable_features(repo, rows)
    if not renamed or not features:
        return ConsistencyReport(rows=len(rows), features={}, skipped=skipped)
    again = recompute(features, renamed)
    return compare(renamed, again, features, max_examples=max_examples, skipped=skipped)


def batch_recompute(repo: FeatureRepo, data_dir: Path, *, progress: Callable[[float], None] | None = None) -> Recompute:
    """The batch path as a `Recompute`: one point-in-time training set over the sampled rows, as served.

    Entity keys in the prediction log are keyed by entity name (or join key);
    each row's time is its `served_at`, and only events applied by then count.
    """

    def run(features: Sequence[str], rows: Sequence[ServedRow]) -> list[dict[str, Any]]:
        import pyarrow as pa

        from feature_store.offline.engine import connect
        from feature_store.offline.training import TrainingSetQuery, output_name, training_set

        grouped = repo.group_features(features)
        columns: dict[str, Any] = {}
        for view in grouped:
            entity = view.entity
            if entity.join_key in columns:
                continue
            keys = [_entity_key(row, entity.name, entity.join_key) for row in rows]
            kind = pa.int64() if entity.dtype == "int" else pa.string()
            columns[entity.join_key] = pa.array(
                [None if k is None else (int(k) if entity.dtype == "int" else str(k)) for k in keys], kind)
        columns["__served_at"] = pa.array([row.served_at for row in rows], pa.int64())
        query = TrainingSetQuery(features={v: list(f) for v, f in grouped.items()}, timestamp_column="__served_at")
        con = connect(data_dir)
        try:
            table = training_set(con, data_dir, pa.table(columns), query, progress=progress)
        finally:
            con.close()
        out: list[dict[str, Any]] = [{} for _ in rows]
        for view, names in grouped.items():
            for name in names:
                values = table.column(output_name(view, name)).to_pylist()
                for i, value in enumerate(values):
                    out[i][f"{view.name}:{name}"] = value
        return out

    return run


def _entity_key(row: ServedRow, entity: str, join_key: str) -> Any:
    keys = row.entity_keys
    return keys.get(entity, keys.get(join_key))
