"""Batch training: fit a river or scikit-learn-style model on a point-in-time training set, gate it, register it.

`train_model` takes the training set (Arrow/pandas, as `FeatureStore.get_training_set`
returns it), splits it by time (the newest `holdout_fraction` of rows by the
timestamp column is the holdout, so nothing from the holdout's future trains
the model), fits on the rest, then scores model and baseline on the holdout
through the same loaders serving uses (`feature_store.models.load_model`).
The acceptance gate decides: accepted versions are registered (stage
staging) with metrics and lineage; rejected ones are recorded with the
reason and never registered, so they can never be served. Every outcome is a
run in the run store. The reference profiles of the features are saved for
drift monitoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from feature_store.errors import DefinitionError
from feature_store.models import ModelRegistry, ModelVersion, load_model
from feature_store.models.flavors import Flavor, artifact_bytes
from feature_store.monitoring import profile_table, profiles_path, save_profiles
from feature_store.training.gate import AcceptanceGate, GateDecision
from feature_store.training.metrics import Task, evaluate
from feature_store.training.runs import RunStore, TrainingRun, code_version

__all__ = ["TrainingResult", "flavor_of", "train_model"]


@dataclass(frozen=True, kw_only=True)
class TrainingResult:
    run: TrainingRun
    decision: GateDecision
    version: ModelVersion | None  # None when the gate rejected the model


def flavor_of(model: Any) -> Flavor:
    """`river` for objects with `learn_one`, `sklearn` for objects with `fit`."""
    if hasattr(model, "learn_one"):
        return "river"
    if hasattr(model, "fit"):
        return "sklearn"
    raise DefinitionError(f"{type(model).__name__} is neither a river model (learn_one) nor scikit-learn style (fit)")


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "to_arrow"):  # a training-set result object
        return data.to_arrow()
    return pa.Table.from_pandas(data, preserve_index=False)


def _fit(model: Any, flavor: Flavor, rows: list[dict[str, Any]], labels: list[float], features: Sequence[str],
         task: Task, progress: Callable[[float], None] | None) -> None:
    if flavor == "river":
        step = max(1, len(rows) // 100)
        for i, (row, y) in enumerate(zip(rows, labels, strict=True)):
            x = {k: v for k, v in row.items() if v is not None}
            model.learn_one(x, (y >= 0.5) if task == "binary" else y)
            if progress is not None and i % step == 0:
                progress(i / len(rows))
    else:
        model.fit([[row.get(f) for f in features] for row in rows], labels)
    if progress is not None:
        progress(1.0)


def train_model(
    name: str,
    model: Any,
    training_set: Any,
    *,
    label: str,
    registry: ModelRegistry,
    runs: RunStore,
    baseline: str | ModelVersion,
    gate: AcceptanceGate | None = None,
    features: Sequence[str] | None = None,
    timestamp_column: str = "event_timestamp",
    task: Task = "binary",
    holdout_fraction: float = 0.2,
    feature_service: str | None = None,
    service_fingerprint: str | None = None,
    training_set_ref: str | None = None,
    params: Mapping[str, Any] | None = None,
    fallback: str | None = None,
    data_dir: Path | None = None,
    actor: str = "system",
    progress: Callable[[float], None] | None = None,
) -> TrainingResult:
    """Fit `model`, gate it against `baseline` (a rule expression or a registered version), register if accepted.

    `features` defaults to every column except the label, the timestamp and
    the entity keys (string columns are dropped unless named). With
    `data_dir`, the features' reference profiles are saved under
    `<data_dir>/monitoring/profiles/<feature_service or name>.json`.
    `progress` gets the fraction of the fit done (river models, row by row).
    """
    started = time.time()
    table = _as_table(training_set)
    if not 0.0 < holdout_fraction < 1.0:
        raise DefinitionError(f"holdout_fraction {holdout_fraction} must be between 0 and 1 (exclusive)")
    for column in (label, timestamp_column):
        if column not in table.column_names:
            raise DefinitionError(f"training set has no column {column!r} (columns: {', '.join(table.column_names)})")
    if features is None:
        features = [c for c in table.column_names if c not in (label, timestamp_column)
                    and (pa.types.is_integer(table.schema.field(c).type)
                         or pa.types.is_floating(table.schema.field(c).type))]
    features = list(features)
    flavor = flavor_of(model)
    order = sorted(range(table.num_rows), key=table.column(timestamp_column).to_pylist().__getitem__)
    table = table.take(pa.array(order, type=pa.int64()))
    cut = int(table.num_rows * (1.0 - holdout_fraction))
    if cut < 1 or cut >= table.num_rows:
        raise DefinitionError(f"training set of {table.num_rows} rows is too small to hold out {holdout_fraction:.0%}")
    rows = table.select(features).to_pylist()
    labels = [float(v) if v is not None else 0.0 for v in table.column(label).to_pylist()]
    times = table.column(timestamp_column).to_pylist()
    _fit(model, flavor, rows[:cut], labels[:cut], features, task, progress)

    holdout_rows, holdout_labels = rows[cut:], labels[cut:]
    data = artifact_bytes(model, flavor)
    scores = load_model(flavor, data, features=features).predict(holdout_rows)
    baseline_rows = table.drop_columns([label]).slice(cut).to_pylist()  # a rule may use any input, never the label
    if isinstance(baseline, str):
        baseline_scores = load_model("rule", baseline.encode()).predict(baseline_rows)
        baseline_ref = baseline
    else:
        baseline_scores = registry.load(baseline).predict(baseline_rows)
        baseline_ref = f"{baseline.name}@{baseline.version}"
    metrics = evaluate(holdout_labels, scores, task)
    baseline_metrics = evaluate(holdout_labels, baseline_scores, task)
    decision = (gate or AcceptanceGate(primary="roc_auc" if task == "binary" else "mae")).decide(
        metrics, baseline_metrics)

    time_range = (_ms(times[0]), _ms(times[-1]))
    refs = {"training_set": training_set_ref, "rows": table.num_rows, "train_rows": cut,
            "holdout_rows": table.num_rows - cut, "baseline": baseline_ref}
    all_params = {"flavor": flavor, "task": task, "holdout_fraction": holdout_fraction, "label": label,
                  "baseline": baseline_ref,
                  **dict(params or {})}
    version = None
    if decision.accepted:
        version = registry.register(
            name, data, flavor=flavor, feature_service=feature_service, service_fingerprint=service_fingerprint,
            features=features, metrics=metrics, training_set_ref=training_set_ref, params=all_params,
            data_range=time_range, fallback=fallback, description=decision.reason, actor=actor)
    if data_dir is not None:
        save_profiles(profiles_path(data_dir, feature_service or name), profile_table(table, features))
    run = runs.record(TrainingRun(
        model=name, kind="batch", status="accepted" if decision.accepted else "rejected", reason=decision.reason,
        params=all_params, metrics=metrics, baseline_metrics=baseline_metrics, feature_service=feature_service,
        service_fingerprint=service_fingerprint, features=tuple(features), data_refs=refs, time_range=time_range,
        model_version=version.version if version else None, code_version=code_version(),
        started_at=int(started * 1000), duration_s=time.time() - started,
    ))
    return TrainingResult(run=run, decision=decision, version=version)


def _ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    return int(value)
