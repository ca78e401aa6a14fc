"""`POST /v1/predict/{model}`: production and pinned versions, fallbacks, the prediction log, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from feature_store.models import ModelRegistry
from feature_store.settings import Settings
from schemas import PREDICTION_LOG
from serving import ServingConfig, create_app
from serving.prediction_log import PredictionLog
from tests.serving.conftest import OnlineWriter, last, profile, spend

pytestmark = pytest.mark.integration


class Scaled:
    """An estimator with the scikit-learn API (predict_proba on a 2-D list)."""

    def predict_proba(self, x: list[list[Any]]) -> list[list[float]]:
        return [[0.0, min(1.0, row[0] / 100.0)] for row in x]


class Broken:
    def predict(self, x: list[list[Any]]) -> list[float]:
        raise RuntimeError("boom")


def _registry(app: FastAPI) -> ModelRegistry:
    registry: ModelRegistry = app.state.serving.models
    return registry


def _now() -> int:
    return time.time_ns() // 1_000_000


def test_production_model_answers_and_is_logged(app: FastAPI, client: TestClient, store: OnlineWriter) -> None:
    registry = _registry(app)
    registry.register("fraud", Scaled(), flavor="sklearn", feature_service="svc",
                      features=["spend__amount_sum_1h", "ratio"], fallback="0.5")
    registry.promote("fraud", 1, "production")
    store.events(spend, "u1", [(_now() - 1_000, {"amount": 30.0})])
    store.latest(last, "u1", _now() - 1_000, [30.0, "US"])
    store.latest(profile, "u1", _now() - 1_000, [33])
    response = client.post("/v1/predict/fraud", json={"entities": [{"user_id": "u1"}], "request": {"amount": 60.0}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == 1
    (prediction,) = body["predictions"]
    assert prediction["prediction"] == pytest.approx(0.3)
    assert prediction["fallback"] is False
    assert prediction["features"]["ratio"] == pytest.approx(2.0)
    assert prediction["features"]["amount"] == 60.0
    assert len(prediction["request_id"]) == 36
    queue = app.state.serving.prediction_log.queue
    assert queue.qsize() == 1
    key, value = PredictionLog.encode(queue.get_nowait())
    record = PREDICTION_LOG.validate(orjson.loads(value))
    assert key == prediction["request_id"].encode()
    assert record["request_id"] == prediction["request_id"]
    assert record["model_version"] == 1
    assert orjson.loads(record["entity_keys"]) == {"user_id": "u1"}
    assert 'featurestream_predictions_total{fallback="false",model="fraud",version="1"} 1.0' in client.get(
        "/metrics").text


def test_missing_features_use_the_fallback(app: FastAPI, client: TestClient) -> None:
    registry = _registry(app)
    registry.register("fraud", Scaled(), flavor="sklearn", feature_service="svc",
                      features=["spend__amount_sum_1h"], fallback="if_(amount > 100, 0.9, 0.1)")
    registry.promote("fraud", 1, "production")
    body = client.post("/v1/predict/fraud", json={"entities": [{"user_id": "new"}], "request": {"amount": 500.0}}
                       ).json()
    (prediction,) = body["predictions"]
    assert prediction["fallback"] is True
    assert prediction["prediction"] == pytest.approx(0.9)
    assert "missing features" in prediction["reason"]


def test_model_error_uses_a_baseline_model(app: FastAPI, client: TestClient, store: OnlineWriter) -> None:
    registry = _registry(app)
    registry.register("baseline", "0.25", flavor="rule")
    registry.register("fraud", Broken(), flavor="sklearn", features=["amount"], fallback="baseline@1")
    registry.promote("fraud", 1, "production")
    body = client.post("/v1/predict/fraud", json={"entities": [{"user_id": "x"}], "request": {"amount": 1.0}}).json()
    (prediction,) = body["predictions"]
    assert prediction == {**prediction, "prediction": 0.25, "fallback": True,
                          "reason": "the model failed: RuntimeError"}


def test_no_fallback_answers_null_with_the_reason(app: FastAPI, client: TestClient) -> None:
    _registry(app).register("bare", Broken(), flavor="sklearn", features=["amount"])
    body = client.post("/v1/predict/bare?version=1", json={"entities": [{"user_id": "x"}]}).json()
    (prediction,) = body["predictions"]
    assert prediction["prediction"] is None
    assert prediction["fallback"] is False
    assert prediction["reason"] == "the model failed: RuntimeError; no fallback declared"
    assert app.state.serving.prediction_log.queue.qsize() == 0  # nothing answered, nothing logged


def test_pinned_version_and_errors(app: FastAPI, client: TestClient) -> None:
    registry = _registry(app)
    registry.register("r", "1", flavor="rule")
    registry.register("r", "2", flavor="rule")
    registry.promote("r", 2, "production")
    payload = {"entities": [{"user_id": "x"}]}
    assert client.post("/v1/predict/r", json=payload).json()["predictions"][0]["prediction"] == 2.0
    assert client.post("/v1/predict/r?version=1", json=payload).json()["predictions"][0]["prediction"] == 1.0
    missing = client.post("/v1/predict/r?version=9", json=payload)
    assert missing.status_code == 404
    assert "has no version 9" in missing.json()["detail"]
    assert client.post("/v1/predict/ghost", json=payload).status_code == 404
    registry.register("staged", "1", flavor="rule")
    no_prod = client.post("/v1/predict/staged", json=payload)
    assert no_prod.status_code == 404
    assert "no production version" in no_prod.json()["detail"]
    assert client.post("/v1/predict/r?version=0", json=payload).status_code == 422
    assert client.post("/v1/predict/r", json={"entities": [{"user_id": str(i)} for i in range(51)]}
                       ).status_code == 413


def test_promotion_elsewhere_is_seen_within_the_ttl(app: FastAPI, client: TestClient) -> None:
    registry = _registry(app)
    registry.register("p", "1", flavor="rule")
    registry.register("p", "2", flavor="rule")
    registry.promote("p", 1, "production")
    payload = {"entities": [{"user_id": "x"}]}
    assert client.post("/v1/predict/p", json=payload).json()["model_version"] == 1
    ModelRegistry(registry.db_path, registry.artifact_dir).promote("p", 2, "production")  # another process
    time.sleep(app.state.serving.config.model_ttl_s + 0.1)
    assert client.post("/v1/predict/p", json=payload).json()["model_version"] == 2


def test_predictions_reach_the_kafka_topic(serving_settings: Settings, repo: Any, config: ServingConfig,
                                           kafka_bootstrap: str, unique: str) -> None:
    topic = f"_predictions_{unique}"
    settings = serving_settings.model_copy(update={"kafka": kafka_bootstrap})
    app = create_app(settings, repo, config=ServingConfig(key_prefix=config.key_prefix, prediction_topic=topic))
    app.state.serving.models.register("k", "0.75", flavor="rule")
    app.state.serving.models.promote("k", 1, "production")
    with TestClient(app) as client:
        ids = [client.post("/v1/predict/k", json={"entities": [{"user_id": f"u{i}"}]}).json()["predictions"][0][
            "request_id"] for i in range(3)]
        # 1,000 at once: more than one producer batch holds (256 KB), so the log sends several
        many = client.post("/v1/predict/k", json={"entities": [{"user_id": f"v{i}"} for i in range(1000)]}).json()
        ids += [p["request_id"] for p in many["predictions"]]
        deadline = time.monotonic() + 20
        while app.state.serving.prediction_log.sent < len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert app.state.serving.prediction_log.sent == len(ids) == 1003
    records = asyncio.run(_consume(kafka_bootstrap, topic, len(ids)))
    assert sorted(r["request_id"] for r in records) == sorted(ids)
    assert all(r["prediction"] == 0.75 and r["model"] == "k" for r in records)


async def _consume(bootstrap: str, topic: str, n: int) -> list[dict[str, Any]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while len(out) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                out.extend(PREDICTION_LOG.validate(orjson.loads(m.value)) for m in messages)
        return out
    finally:
        await consumer.stop()
