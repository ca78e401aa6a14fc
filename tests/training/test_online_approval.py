"""Online learner (progressive validation, drift recovery, pickle, replay) and four-eyes approvals."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from river import linear_model, preprocessing

from feature_store.errors import ApprovalError, RegistryError
from feature_store.models import ModelRegistry
from feature_store.training import Approvals, OnlineLearner
from tests.training.data import fraud_rows


def _learner(**kw: object) -> OnlineLearner:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    return OnlineLearner("fraud", model, window=400, **kw)  # type: ignore[arg-type]


def _feed(learner: OnlineLearner, rows: list[dict[str, float]], start: int = 0) -> None:
    for i, row in enumerate(rows, start):
        x = {"ratio": row["ratio"], "foreign": row["foreign"]}
        learner.learn(x, row["label"], source="labels:0", offset=i, event_time=int(row["event_timestamp"]))


def test_progressive_metric_drops_on_concept_drift_then_recovers() -> None:
    learner = _learner()
    _feed(learner, fraud_rows(3000, seed=1))
    before = learner.rolling_metrics()["roc_auc"]
    drifted = fraud_rows(3000, seed=2, drift=True)
    _feed(learner, drifted[:300], start=3000)
    during = learner.rolling_metrics()["roc_auc"]
    _feed(learner, drifted[300:], start=3300)
    after = learner.rolling_metrics()["roc_auc"]
    assert before > 0.8
    assert during < before - 0.2  # the old relation is now wrong
    assert after > 0.75  # learned the new one
    assert learner.labels_seen == 6000
    assert learner.history[-1][0] == 6000


def test_predict_before_learn_and_replay_is_skipped() -> None:
    learner = _learner()
    x = {"ratio": 3.0, "foreign": 1.0}
    first = learner.learn(x, 1.0, source="labels:0", offset=5)
    assert first == pytest.approx(0.5)  # an untrained model said 0.5 before learning
    assert learner.learn(x, 1.0, source="labels:0", offset=5) is None  # same offset: not learned twice
    assert learner.learn(x, 1.0, source="labels:0", offset=3) is None
    assert learner.learn(x, 1.0, source="labels:1", offset=3) is not None  # other partition
    assert learner.labels_seen == 2
    assert learner.lineage()["label_offsets"] == {"labels:0": [5, 5], "labels:1": [3, 3]}


def test_pickle_round_trip_keeps_state_and_predictions() -> None:
    learner = _learner(snapshot_every=1000)
    rows = fraud_rows(1500, seed=4)
    _feed(learner, rows[:1000])
    assert learner.snapshot_due
    clone: OnlineLearner = pickle.loads(pickle.dumps(learner))
    assert clone.metrics() == learner.metrics()
    assert clone.lineage() == learner.lineage()
    probe = {"ratio": 4.0, "foreign": 1.0}
    assert clone.predict_proba_one(probe) == learner.predict_proba_one(probe)
    _feed(clone, rows[1000:], start=1000)
    _feed(learner, rows[1000:], start=1000)
    assert clone.predict_proba_one(probe) == learner.predict_proba_one(probe)


def test_snapshot_registers_as_a_river_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models.sqlite", tmp_path / "artifacts")
    learner = _learner(snapshot_every=200)
    _feed(learner, fraud_rows(250, seed=5))
    version = registry.register("fraud", learner, flavor="river", features=["ratio", "foreign"],
                                metrics=learner.metrics(), params={"online": True, **learner.lineage()})
    learner.mark_snapshot(version.version)
    assert not learner.snapshot_due
    assert learner.lineage()["label_offsets"] == {}
    assert learner.lineage()["parent_version"] == version.version
    loaded = registry.load(version)
    assert loaded.predict([{"ratio": 4.0, "foreign": 1.0}])[0] is not None
    assert version.params["label_offsets"] == {"labels:0": [0, 249]}


@pytest.fixture
def approvals(tmp_path: Path) -> Approvals:
    registry = ModelRegistry(tmp_path / "models.sqlite", tmp_path / "artifacts")
    for expr in ("ratio", "ratio * 2", "foreign"):
        registry.register("fraud", expr, flavor="rule", metrics={"roc_auc": 0.7})
    registry.promote("fraud", 1, "production", actor="alice", reason="first")
    return Approvals(registry, tmp_path / "approvals.sqlite")


def test_four_eyes_promotion_and_one_call_rollback(approvals: Approvals) -> None:
    registry = approvals.registry
    approvals.set_challenger("fraud", 2, actor="alice", reason="online snapshot")
    assert approvals.challenger("fraud") == 2
    request = approvals.request_promotion("fraud", 2, requester="alice", reason="beats champion in shadow",
                                          metrics={"shadow_roc_auc": 0.9})
    assert request.status == "pending"
    with pytest.raises(ApprovalError, match="different API key"):
        approvals.approve(request.id, approver="alice")
    assert registry.get("fraud").version == 1  # nothing moved
    promoted = approvals.approve(request.id, approver="bob", reason="looked at the shadow metrics")
    assert promoted.stage == "production"
    assert registry.get("fraud").version == 2
    assert approvals.challenger("fraud") is None
    assert approvals.request(request.id).decided_by == "bob"
    with pytest.raises(ApprovalError, match="already approved"):
        approvals.approve(request.id, approver="carol")
    restored = approvals.rollback("fraud", actor="carol", reason="alerts after promotion")
    assert restored.version == 1
    assert registry.get("fraud").version == 1
    actions = [(e["action"], e["actor"], e["version"]) for e in approvals.audit("fraud")]
    assert actions == [("challenger", "alice", 2), ("request", "alice", 2), ("approve", "bob", 2),
                       ("rollback", "carol", 1)]
    assert approvals.audit("fraud")[1]["metrics"]["shadow_roc_auc"] == 0.9
    assert approvals.audit("fraud")[1]["metrics"]["registered"] == {"roc_auc": 0.7}
    assert any(a.actor == "alice+bob" and a.to_stage == "production" for a in registry.audit("fraud"))


def test_reject_and_invalid_requests(approvals: Approvals) -> None:
    with pytest.raises(ApprovalError, match="reason"):
        approvals.request_promotion("fraud", 3, requester="alice", reason=" ")
    with pytest.raises(ApprovalError, match="already in production"):
        approvals.request_promotion("fraud", 1, requester="alice", reason="x")
    with pytest.raises(ApprovalError, match="staging"):
        approvals.set_challenger("fraud", 1, actor="alice")
    req = approvals.request_promotion("fraud", 3, requester="alice", reason="try")
    with pytest.raises(ApprovalError, match="different API key"):
        approvals.reject(req.id, approver="alice", reason="no")
    assert approvals.reject(req.id, approver="bob", reason="worse in shadow").status == "rejected"
    assert [r.status for r in approvals.requests("fraud")] == ["rejected"]
    assert approvals.registry.get("fraud").version == 1
    with pytest.raises(RegistryError, match="no earlier production"):
        approvals.rollback("fraud", actor="bob")
