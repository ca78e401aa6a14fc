"""Online learning in the worker's label flows, against a real Redis and a real model registry.

Drives `LabelFlows` the way its Faust agents do (raw prediction-log and label
records with their offsets), without a broker in between.
"""

from __future__ import annotations

import pickle
from typing import Any

import orjson
import pytest
from river import linear_model, preprocessing

from feature_store.models import ModelRegistry
from feature_store.settings import Settings
from feature_store.training import Approvals, OnlineLearner, RunStore
from feature_store.training.live import read_live
from streams.labels import FlowConfig, JoinConfig, LabelFlows
from tests.training.data import fraud_rows

T0 = 1_767_225_600_000


def _register_online(settings: Settings) -> ModelRegistry:
    registry = ModelRegistry.from_settings(settings)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    registry.register("fraud", model, flavor="river", features=["ratio", "foreign"], params={"online": True},
                      fallback="0.5")
    registry.promote("fraud", 1, "production", actor="test", reason="start")
    return registry


def _prediction(i: int, row: dict[str, float], version: int = 1) -> bytes:
    return orjson.dumps({
        "request_id": f"r{i}", "model": "fraud", "model_version": version, "served_at": T0 + i,
        "entity_keys": orjson.dumps({"user_id": f"u{i % 50}"}).decode(),
        "features": orjson.dumps({"ratio": row["ratio"], "foreign": row["foreign"]}).decode(),
        "prediction": 0.5, "fallback": False, "service": "",
    })


def _label(i: int, row: dict[str, float]) -> bytes:
    return orjson.dumps({"request_id": f"r{i}", "event_time": T0 + i + 1000, "label": row["label"]})


async def _feed(flows: LabelFlows, rows: list[dict[str, float]], start: int = 0) -> None:
    for i, row in enumerate(rows, start):
        await flows.on_prediction(_prediction(i, row))
        await flows.on_label(_label(i, row), source="_labels:0", offset=i)


@pytest.fixture
def config(unique: str) -> FlowConfig:
    return FlowConfig(prefix=f"t{unique}", snapshot_every=100, join=JoinConfig(wait_s=0.0))


async def test_learner_snapshots_with_lineage_and_survives_a_restart(settings: Settings, config: FlowConfig) -> None:
    registry = _register_online(settings)
    rows = fraud_rows(350, seed=21)
    flows = LabelFlows(settings, config)
    await _feed(flows, rows[:250])
    learner = flows.trainer.learners["fraud"]
    assert learner.labels_seen == 250
    versions = registry.list("fraud")
    assert [v.version for v in versions] == [1, 2, 3]  # snapshots after 100 and 200 labels
    snap = versions[-1]
    assert snap.stage == "staging"
    assert snap.params["online"]
    assert snap.params["label_offsets"] == {"_labels:0": [100, 199]}
    assert snap.params["parent_version"] == 2
    assert snap.training_set_ref == "labels:_labels:0@100-199"
    assert snap.data_range == (T0 + 100 + 1000, T0 + 199 + 1000)
    runs = RunStore.from_settings(settings).list("fraud")
    assert [r.kind for r in runs] == ["online_snapshot", "online_snapshot"]
    assert runs[0].model_version == 3
    assert runs[0].data_refs["label_offsets"] == {"_labels:0": [100, 199]}
    probe = {"ratio": 4.0, "foreign": 1.0}
    at_snapshot = registry.load(snap).predict([probe])[0]
    await flows.stop()

    # a new worker: restores the last snapshot (200 labels), skips replayed labels it already learned
    restarted = LabelFlows(settings, config)
    await _feed(restarted, rows[150:250], start=150)  # replay from an older committed offset
    restored = restarted.trainer.learners["fraud"]
    assert restored.base_version == 3
    assert restored.labels_seen == 250  # 200 from the snapshot + 50 relearned, 50 skipped
    await _feed(restarted, rows[250:], start=250)
    assert restored.labels_seen == 350
    assert registry.get("fraud", 4).params["label_offsets"] == {"_labels:0": [200, 299]}
    assert at_snapshot == pytest.approx(registry.load(snap).predict([probe])[0])  # versions are immutable
    await restarted.tick()
    live = await read_live(restarted.redis, restarted.keys, "fraud")
    assert live["learner"]["labels_seen"] == 350
    assert live["learner"]["version"] == 4
    assert live["learner"]["metrics"]["rolling_roc_auc"] > 0.65
    await restarted.stop()


async def test_snapshot_artifact_is_a_pickled_learner(settings: Settings, config: FlowConfig) -> None:
    registry = _register_online(settings)
    flows = LabelFlows(settings, config)
    await _feed(flows, fraud_rows(100, seed=3))
    version = registry.get("fraud", 2)
    path = registry.artifact_dir / version.sha256[:2] / version.sha256
    learner = pickle.loads(path.read_bytes())
    assert isinstance(learner, OnlineLearner)
    assert learner.labels_seen == 100
    await flows.stop()


async def test_challenger_scores_in_shadow_and_is_judged_by_labels(settings: Settings, config: FlowConfig) -> None:
    registry = _register_online(settings)
    registry.register("fraud", "ratio > 2.5", flavor="rule", features=["ratio"])  # version 2: a decent rule
    Approvals.from_settings(settings, registry).set_challenger("fraud", 2, actor="alice")
    flows = LabelFlows(settings, config)
    await _feed(flows, fraud_rows(80, seed=8))
    live = await read_live(flows.redis, flows.keys, "fraud")
    perf: dict[str, Any] = live["performance"]
    assert perf["1"]["live"]["labels"] == 80
    assert perf["2"]["shadow"]["labels"] == 80
    assert perf["2"]["shadow"]["accuracy"] > 0.5
    assert live["labels"]["joined"] == 80
    await flows.stop()


async def test_monitoring_report_and_drift_triggered_snapshot(settings: Settings, config: FlowConfig) -> None:
    registry = _register_online(settings)
    flows = LabelFlows(settings, FlowConfig(prefix=config.prefix, snapshot_every=100_000, monitor_bootstrap=150,
                                            retrain_after=100, join=JoinConfig(wait_s=0.0)))
    rows = fraud_rows(450, seed=5)
    await _feed(flows, rows[:200])
    shifted = [{**r, "ratio": r["ratio"] * 6 + 5} for r in rows[200:]]
    await _feed(flows, shifted, start=200)
    await flows.tick()
    report = orjson.loads(await flows.redis.get(flows.keys.monitor("fraud")))
    assert report["reference"] == "bootstrap"
    assert report["features"]["ratio"]["status"] == "drift"
    assert any(a["kind"] == "stream_drift" and a["subject"] == "feature:ratio" for a in report["alerts"])
    # the drift alert triggered a retraining run: a snapshot once the learner had seen a window of new labels
    snapshots = [v for v in registry.list("fraud") if v.params.get("snapshot")]
    assert len(snapshots) == 1
    assert "alert" in snapshots[0].description
    assert "alert" in RunStore.from_settings(settings).list("fraud")[0].reason
    await flows.stop()


async def test_snapshot_that_does_not_beat_the_baseline_is_rejected(settings: Settings, config: FlowConfig) -> None:
    registry = ModelRegistry.from_settings(settings)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    # the declared baseline ranks by `ratio` itself: a fresh learner judged on its first labels cannot beat it
    registry.register("fraud", model, flavor="river", features=["ratio", "foreign"],
                      params={"online": True, "baseline": "ratio"})
    flows = LabelFlows(settings, config)
    await _feed(flows, fraud_rows(100, seed=31))
    assert [v.version for v in registry.list("fraud")] == [1]  # nothing registered, so nothing can be served
    run = RunStore.from_settings(settings).list("fraud")[0]
    assert run.status == "rejected"
    assert "does not beat the baseline" in run.reason
    assert run.baseline_metrics["roc_auc"] > run.metrics["rolling_roc_auc"]
    assert run.model_version is None
    assert flows.trainer.learners["fraud"].since_snapshot == 0  # next try after another `snapshot_every` labels
    await flows.stop()
