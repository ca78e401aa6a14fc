"""Batch training through the gate into the registry, run records, list and compare."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from river import linear_model, preprocessing

from feature_store.errors import DefinitionError, UnknownFeatureError
from feature_store.models import ModelRegistry
from feature_store.monitoring import load_profiles, profiles_path
from feature_store.training import AcceptanceGate, Check, RunStore, TrainingRun, code_version, train_model
from tests.training.data import fraud_table


class MeanByBucket:
    """A tiny scikit-learn-style classifier: fraud rate per ratio bucket (fit/predict_proba on a 2-D list)."""

    def fit(self, matrix: list[list[float]], labels: list[float]) -> MeanByBucket:
        buckets: dict[int, list[float]] = {}
        for row, y in zip(matrix, labels, strict=True):
            buckets.setdefault(min(int(row[0]), 5), []).append(y)
        self.rates = {b: statistics.fmean(v) for b, v in buckets.items()}
        return self

    def predict_proba(self, matrix: list[list[float]]) -> list[list[float]]:
        out = []
        for row in matrix:
            p = self.rates.get(min(int(row[0] or 0), 5), 0.5)
            out.append([1 - p, p])
        return out


def _river() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def test_accepted_river_model_is_registered_with_lineage(registry: ModelRegistry, runs: RunStore,
                                                         tmp_path: Path) -> None:
    result = train_model(
        "fraud", _river(), fraud_table(3000), label="label", registry=registry, runs=runs, baseline="foreign",
        gate=AcceptanceGate(checks=(Check(metric="roc_auc", op=">=", value=0.7),)),
        feature_service="fraud_detection", service_fingerprint="fp1", training_set_ref="ts.parquet",
        params={"lr": "default"}, data_dir=tmp_path,
    )
    assert result.decision.accepted, result.decision.reason
    assert result.version is not None
    version = registry.get("fraud", result.version.version)
    assert version.stage == "staging"
    assert version.training_set_ref == "ts.parquet"
    assert version.features == ("ratio", "foreign")
    assert version.metrics["roc_auc"] == pytest.approx(result.run.metrics["roc_auc"])
    assert version.data_range is not None
    run = runs.get(result.run.run_id)
    assert run.status == "accepted"
    assert run.model_version == version.version
    assert run.data_refs["holdout_rows"] == 600
    assert run.metrics["roc_auc"] > run.baseline_metrics["roc_auc"]
    assert run.code_version == code_version()
    assert run.duration_s > 0
    assert set(load_profiles(profiles_path(tmp_path, "fraud_detection"))) == {"ratio", "foreign"}
    # the registered artifact predicts like it did on the holdout
    scores = registry.load(version).predict([{"ratio": 5.0, "foreign": 1.0}, {"ratio": 0.5, "foreign": 0.0}])
    assert scores[0] is not None
    assert scores[1] is not None
    assert scores[0] > scores[1]


def test_rejected_model_is_recorded_never_registered(registry: ModelRegistry, runs: RunStore) -> None:
    # a model that only sees `foreign` cannot beat the rule `foreign` by 0.05 AUC
    result = train_model("fraud", _river(), fraud_table(1000).drop(["ratio"]), label="label", registry=registry,
                         runs=runs, baseline="foreign",
                         features=["foreign"], gate=AcceptanceGate(min_improvement=0.05))
    assert not result.decision.accepted
    assert result.version is None
    assert runs.get(result.run.run_id).status == "rejected"
    assert "does not beat" in runs.get(result.run.run_id).reason
    with pytest.raises(UnknownFeatureError):
        registry.list("fraud")


def test_sklearn_style_model_and_registered_baseline(registry: ModelRegistry, runs: RunStore) -> None:
    base = registry.register("fraud_rule", "foreign", flavor="rule", features=["foreign"])
    result = train_model("fraud", MeanByBucket(), fraud_table(3000, seed=3), label="label", registry=registry,
                         runs=runs, baseline=base, features=["ratio", "foreign"])
    assert result.decision.accepted, result.decision.reason
    assert result.run.data_refs["baseline"] == "fraud_rule@1"
    assert result.version is not None
    assert result.version.flavor == "sklearn"


def test_training_input_errors(registry: ModelRegistry, runs: RunStore) -> None:
    with pytest.raises(DefinitionError, match="no column 'y'"):
        train_model("m", _river(), fraud_table(50), label="y", registry=registry, runs=runs, baseline="1")
    with pytest.raises(DefinitionError, match="too small"):
        train_model("m", _river(), fraud_table(1), label="label", registry=registry, runs=runs, baseline="1",
                    holdout_fraction=0.1)
    with pytest.raises(DefinitionError, match="neither"):
        train_model("m", object(), fraud_table(50), label="label", registry=registry, runs=runs, baseline="1")


def test_runs_list_and_compare(runs: RunStore) -> None:
    a = runs.record(TrainingRun(model="m", kind="batch", status="accepted", metrics={"roc_auc": 0.8},
                                params={"lr": 0.1}, started_at=1, time_range=(1, 2)))
    b = runs.record(TrainingRun(model="m", kind="online_snapshot", status="recorded", metrics={"log_loss": 0.4},
                                data_refs={"label_offsets": {"labels:0": [0, 9]}}, started_at=2))
    runs.record(TrainingRun(model="other", kind="batch", status="rejected", started_at=3))
    assert [r.run_id for r in runs.list("m")] == [b.run_id, a.run_id]
    assert [r.model for r in runs.list(status="rejected")] == ["other"]
    assert runs.get(a.run_id) == a
    table = runs.compare([a.run_id, b.run_id])
    rows = {r["field"]: r["values"] for r in table["rows"]}
    assert table["runs"] == [a.run_id, b.run_id]
    assert rows["kind"] == ["batch", "online_snapshot"]
    assert rows["metric.roc_auc"] == [0.8, None]
    assert rows["metric.log_loss"] == [None, 0.4]
    assert rows["data.label_offsets"] == [None, {"labels:0": [0, 9]}]
    assert rows["time_range"] == [[1, 2], None]
    with pytest.raises(UnknownFeatureError, match="runs list"):
        runs.get("nope")
