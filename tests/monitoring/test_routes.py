"""HTTP routes of issue 7 against a real Redis: labels, monitoring, champion/challenger, runs."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from starlette.testclient import TestClient

import feature_store.examples.card_fraud.features as card_fraud
from feature_store.models import ModelRegistry
from feature_store.monitoring import AlertLog, alert_log_path
from feature_store.monitoring.hub import MonitorHub
from feature_store.repo import load_repo
from feature_store.settings import Settings, load_settings
from feature_store.training import RunStore, TrainingRun
from feature_store.training.live import LiveKeys, perf_fields
from serving import ServingConfig, create_app

ALICE, BOB, APP = "alice-key", "bob-key", "app-key"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return load_settings(**{**settings.model_dump(), "kafka": None, "api_keys": {"app": APP},
                            "admin_keys": {"alice": ALICE, "bob": BOB}})


@pytest.fixture
def client(api_settings: Settings, unique: str) -> Iterator[TestClient]:
    app = create_app(api_settings, load_repo(card_fraud.__file__), config=ServingConfig(key_prefix=f"t{unique}"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def test_labels_need_a_key_valid_labels_and_kafka(client: TestClient) -> None:
    label = {"request_id": "r1", "event_time": 1_767_225_600_000, "label": 1.0}
    assert client.post("/v1/labels", json={"labels": [label]}).status_code == 401
    bad = client.post("/v1/labels", json={"labels": [label, {"event_time": 1, "label": 0.0}]}, headers=_h(APP))
    assert bad.status_code == 422
    assert "labels[1]" in bad.json()["detail"]
    assert client.post("/v1/labels", json={"labels": []}, headers=_h(APP)).status_code == 422
    down = client.post("/v1/labels", json={"labels": [label]}, headers=_h(APP))
    assert down.status_code == 503  # no Kafka configured: retry later, never a 500
    assert "FEATURESTREAM_KAFKA" in down.json()["detail"]


async def test_monitoring_report_alerts_and_metrics(api_settings: Settings, unique: str, tmp_path: Path) -> None:
    hub = MonitorHub(api_settings.data_dir, bootstrap=100)
    rng = random.Random(1)
    for i in range(400):
        amount = rng.gauss(50, 10) if i < 200 else rng.gauss(150, 10)
        hub.observe({"model": "fraud", "service": "fraud_detection", "prediction": 0.2,
                     "features": {"user_spend__amount_sum_1h": amount}})
    r = aioredis.Redis.from_url(str(api_settings.redis))
    await hub.publish(r, LiveKeys(f"t{unique}").monitor)
    await r.aclose()
    app = create_app(api_settings, load_repo(card_fraud.__file__), config=ServingConfig(key_prefix=f"t{unique}"))
    with TestClient(app, raise_server_exceptions=False) as client:
        got = client.get("/v1/monitoring/fraud_detection", headers=_h(APP))
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["status"] == "drift"
        assert body["report"]["features"]["user_spend__amount_sum_1h"]["status"] == "drift"
        assert body["report"]["reference"] == "bootstrap"
        assert {a["kind"] for a in body["alerts"]} >= {"feature_drift"}
        alerts = client.get("/v1/monitoring/fraud_detection/alerts", params={"kind": "feature_drift"},
                            headers=_h(APP)).json()["alerts"]
        assert alerts
        assert alerts == [a.to_dict() for a in AlertLog(alert_log_path(api_settings.data_dir))
                          .read(service="fraud_detection", kind="feature_drift")]
        assert client.get("/v1/monitoring/nope", headers=_h(APP)).status_code == 404
        assert client.get("/v1/monitoring/fraud_detection").status_code == 401  # reads need a key once keys exist
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline and "featurestream_monitoring_status" not in text:
            text = client.get("/metrics").text
            time.sleep(0.2)
        assert 'featurestream_monitoring_status{service="fraud_detection"} 2.0' in text
        assert 'featurestream_monitoring_feature_psi{feature="user_spend__amount_sum_1h"' in text


async def test_champion_challenger_four_eyes_and_runs(client: TestClient, api_settings: Settings,
                                                      unique: str) -> None:
    registry = ModelRegistry.from_settings(api_settings)
    for expr in ("0.2", "user_last_txn__amount / 1000"):
        registry.register("fraud", expr, flavor="rule")
    registry.promote("fraud", 1, "production", actor="setup", reason="first")
    r = aioredis.Redis.from_url(str(api_settings.redis))
    keys = LiveKeys(f"t{unique}")
    for name, value in {**perf_fields(1, "live", 0.2, 1.0), **perf_fields(2, "shadow", 0.9, 1.0)}.items():
        await r.hincrbyfloat(keys.perf("fraud"), name, value)
    await r.aclose()

    assert client.put("/v1/models/fraud/challenger", json={"version": 2}, headers=_h(APP)).status_code == 403
    assert client.put("/v1/models/fraud/challenger", json={"version": 1}, headers=_h(ALICE)).status_code == 403
    assert client.put("/v1/models/nope/challenger", json={"version": 1}, headers=_h(ALICE)).status_code == 404
    assert client.put("/v1/models/fraud/challenger", json={"version": 2}, headers=_h(ALICE)).status_code == 200
    state = client.get("/v1/models/fraud/champion-challenger", headers=_h(APP)).json()
    assert (state["champion"], state["challenger"]) == (1, 2)
    assert state["performance"]["2"]["shadow"]["accuracy"] == 1.0
    assert state["performance"]["1"]["live"]["accuracy"] == 0.0

    asked = client.post("/v1/models/fraud/promotions", json={"version": 2, "reason": "better in shadow"},
                        headers=_h(ALICE))
    assert asked.status_code == 201, asked.text
    rid = asked.json()["id"]
    assert asked.json()["metrics"]["performance"]["2"]["shadow"]["labels"] == 1.0
    assert client.post("/v1/models/fraud/promotions", json={"version": 2, "reason": ""},
                       headers=_h(ALICE)).status_code == 422
    assert client.get("/v1/models/fraud/champion-challenger", headers=_h(APP)).json()["pending_promotions"]
    selfie = client.post(f"/v1/models/fraud/promotions/{rid}/approve", json={}, headers=_h(ALICE))
    assert selfie.status_code == 403
    assert "different API key" in selfie.json()["detail"]
    assert client.post(f"/v1/models/other/promotions/{rid}/approve", json={}, headers=_h(BOB)).status_code == 404
    ok = client.post(f"/v1/models/fraud/promotions/{rid}/approve", json={"reason": "ok"}, headers=_h(BOB))
    assert ok.status_code == 200, ok.text
    assert ok.json()["production"]["version"] == 2
    assert client.get("/v1/models/fraud", headers=_h(APP)).json()["production_version"] == 2
    back = client.post("/v1/models/fraud/rollback", json={"reason": "drill"}, headers=_h(BOB))
    assert back.json()["version"] == 1
    asked_again = client.post("/v1/models/fraud/promotions", json={"version": 2, "reason": "again"},
                              headers=_h(ALICE)).json()
    rejected = client.post(f"/v1/models/fraud/promotions/{asked_again['id']}/reject", json={"reason": "no"},
                           headers=_h(BOB))
    assert rejected.json()["status"] == "rejected"
    audit = client.get("/v1/models/fraud/promotions", headers=_h(APP)).json()
    assert [(e["action"], e["actor"]) for e in audit["audit"]] == [
        ("challenger", "alice"), ("request", "alice"), ("approve", "bob"), ("request", "alice"), ("reject", "bob")]
    assert any(s["action"] == "rollback" for s in audit["stages"])

    runs = RunStore.from_settings(api_settings)
    a = runs.record(TrainingRun(model="fraud", kind="batch", status="accepted", metrics={"roc_auc": 0.8}))
    b = runs.record(TrainingRun(model="fraud", kind="batch", status="rejected", metrics={"roc_auc": 0.6}))
    listed = client.get("/v1/runs", params={"model": "fraud"}, headers=_h(APP)).json()["runs"]
    assert {x["run_id"] for x in listed} == {a.run_id, b.run_id}
    table = client.get("/v1/runs/compare", params={"ids": [a.run_id, b.run_id]}, headers=_h(APP)).json()
    assert {"field": "metric.roc_auc", "values": [0.8, 0.6]} in table["rows"]
    assert client.get(f"/v1/runs/{a.run_id}", headers=_h(APP)).json()["status"] == "accepted"
    assert client.get("/v1/runs/nope", headers=_h(APP)).status_code == 404
