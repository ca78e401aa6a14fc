"""Model registry: immutable versions, integrity checks, stages, rollback and the audit trail."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from river import linear_model

from feature_store.errors import DefinitionError, ModelIntegrityError, RegistryError, UnknownFeatureError
from feature_store.models import ModelRegistry


class ThresholdEstimator:
    """A tiny estimator with the scikit-learn API: predict_proba on a 2-D list."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def predict_proba(self, x: list[list[Any]]) -> list[list[float]]:
        return [[0.0, 1.0] if (row[0] or 0) > self.threshold else [1.0, 0.0] for row in x]


class PlainEstimator:
    def predict(self, x: list[list[Any]]) -> list[float]:
        return [float(sum(v or 0 for v in row)) for row in x]


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models.sqlite", tmp_path / "artifacts")


def test_register_versions_and_lineage(registry: ModelRegistry) -> None:
    v1 = registry.register("fraud", "amount > 100", flavor="rule", feature_service="fraud_detection",
                           metrics={"auc": 0.5}, training_set_ref="ts/2026-01", params={"k": 1},
                           data_range=(1, 2), service_fingerprint="abc", actor="alice")
    v2 = registry.register("fraud", ThresholdEstimator(10.0), flavor="sklearn", features=["amount"])
    assert (v1.version, v2.version) == (1, 2)
    assert v1.stage == "staging"
    assert v1.metrics == {"auc": 0.5}
    assert v1.data_range == (1, 2)
    assert v1.training_set_ref == "ts/2026-01"
    assert [v.version for v in registry.list("fraud")] == [1, 2]
    assert registry.names() == ["fraud"]
    assert registry.load(v2).predict([{"amount": 20.0}, {"amount": 1.0}]) == [1.0, 0.0]
    assert registry.load(v1).predict([{"amount": 200}, {"amount": None}]) == [1.0, None]


def test_river_and_plain_sklearn(registry: ModelRegistry) -> None:
    model = linear_model.LogisticRegression()
    for _ in range(20):
        model.learn_one({"x": 1.0}, True)
        model.learn_one({"x": -1.0}, False)
    river_v = registry.register("r", model, flavor="river")
    p_high, p_low = registry.load(river_v).predict([{"x": 1.0}, {"x": -1.0}])
    assert p_high is not None
    assert p_low is not None
    assert p_high > 0.5 > p_low
    plain = registry.register("p", PlainEstimator(), flavor="sklearn", features=["a", "b"])
    assert registry.load(plain).predict([{"a": 1, "b": 2}]) == [3.0]


def test_tampered_artifact_is_refused(registry: ModelRegistry) -> None:
    version = registry.register("m", pickle.dumps(ThresholdEstimator(1.0)), flavor="sklearn", features=["a"])
    path = registry.artifact_dir / version.sha256[:2] / version.sha256
    path.write_bytes(pickle.dumps(ThresholdEstimator(999.0)))
    with pytest.raises(ModelIntegrityError, match="was modified and is refused"):
        registry.load(version)
    path.unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        registry.load(version)


def test_bad_registrations(registry: ModelRegistry) -> None:
    with pytest.raises(DefinitionError, match="not a scikit-learn style"):
        registry.register("m", object(), flavor="sklearn", features=["a"])
    with pytest.raises(DefinitionError, match="needs `features`"):
        registry.register("m", ThresholdEstimator(1.0), flavor="sklearn")
    with pytest.raises(DefinitionError, match="not a river model"):
        registry.register("m", object(), flavor="river")
    with pytest.raises(DefinitionError, match="not valid syntax"):
        registry.register("m", "amount >", flavor="rule")
    with pytest.raises(DefinitionError, match="flavor"):
        registry.register("m", "1", flavor="tensorflow")  # type: ignore[arg-type]  # refused at run time
    with pytest.raises(DefinitionError, match="model name"):
        registry.register("bad name", "1", flavor="rule")
    with pytest.raises(UnknownFeatureError, match="unknown model 'base'"):
        registry.register("m", "1", flavor="rule", fallback="base@1")
    assert registry.list() == []


def test_promote_rollback_and_audit(registry: ModelRegistry) -> None:
    for threshold in (1, 2, 3):
        registry.register("m", f"a > {threshold}", flavor="rule")
    with pytest.raises(UnknownFeatureError, match="no production version; promote one"):
        registry.get("m")
    registry.promote("m", 1, "production", actor="bob", reason="first")
    registry.promote("m", 2, "production", actor="bob", reason="better auc")
    assert registry.get("m").version == 2
    assert registry.get("m", 1).stage == "archived"
    back = registry.rollback("m", actor="carol", reason="auc dropped")
    assert back.version == 1
    assert registry.get("m").version == 1
    assert registry.get("m", 2).stage == "archived"
    with pytest.raises(RegistryError, match="no earlier production version"):
        registry.rollback("m")
    registry.promote("m", 3, "production")
    assert registry.rollback("m").version == 1
    trail = registry.audit("m")
    assert [(e.version, e.action, e.to_stage) for e in trail][3:7] == [
        (1, "promote", "production"), (1, "replaced", "archived"), (2, "promote", "production"),
        (2, "rollback", "archived")]
    assert any(e.actor == "carol" and e.reason == "auc dropped" for e in trail)
    assert all(e.at > 0 for e in trail)


def test_unknown_names(registry: ModelRegistry) -> None:
    with pytest.raises(UnknownFeatureError, match="unknown model 'nope'"):
        registry.get("nope", 1)
    registry.register("m", "1", flavor="rule")
    with pytest.raises(UnknownFeatureError, match=r"has no version 7 \(versions: \[1\]\)"):
        registry.get("m", 7)
    with pytest.raises(DefinitionError, match="stage 'live'"):
        registry.promote("m", 1, "live")  # type: ignore[arg-type]  # refused at run time


def test_versions_are_immutable_and_shared(tmp_path: Path) -> None:
    """Two registries on the same files (serving and the worker) see one numbering."""
    a = ModelRegistry(tmp_path / "m.sqlite", tmp_path / "art")
    b = ModelRegistry(tmp_path / "m.sqlite", tmp_path / "art")
    assert a.register("m", "1", flavor="rule").version == 1
    assert b.register("m", "1", flavor="rule").version == 2
    assert a.get("m", 1).sha256 == b.get("m", 2).sha256  # content addressed: one artifact
