"""Faults and push: Redis stopped and restarted under a running app; events pushed to the real broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr
from starlette.testclient import TestClient

from feature_store.local_stack import LocalStack
from feature_store.online import partition_for
from feature_store.online.keys import hash_tag
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from serving import ServingConfig, create_app
from tests.fixtures.redis_cluster import start_cluster, start_node, wait_cluster_ok
from tests.serving.conftest import WRITER, last

pytestmark = pytest.mark.integration


def test_redis_down_answers_503_fast_and_recovers(serving_settings: Settings, repo: FeatureRepo,
                                                  config: ServingConfig, private_redis: LocalStack) -> None:
    settings = serving_settings.model_copy(update={"redis": private_redis.redis_url})
    app = create_app(settings, repo, config=config)
    app.state.serving.models.register("m", "1", flavor="rule", feature_service="strict")
    app.state.serving.models.promote("m", 1, "production")
    features = {"features": ["last:amount"], "entities": [{"user_id": "u"}]}
    predict = {"entities": [{"user_id": "u"}]}
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/features", json=features).status_code == 200
        assert client.get("/readyz").status_code == 200
        private_redis.stop_redis()
        for path, payload in (("/v1/features", features), ("/v1/predict/m", predict)):
            for _ in range(2):  # the pooled connection breaks first, then new connections are refused
                start = time.perf_counter()
                response = client.post(path, json=payload)
                elapsed = time.perf_counter() - start
                assert response.status_code == 503, response.text
                assert elapsed < 1.0
                assert "Redis is unreachable" in response.json()["detail"]
                assert response.headers["Retry-After"] == "1"
        start = time.perf_counter()
        assert client.get("/readyz").status_code == 503
        assert time.perf_counter() - start < 1.0
        assert client.get("/healthz").status_code == 200
        private_redis.start_redis()
        assert client.post("/v1/features", json=features).status_code == 200
        assert client.post("/v1/predict/m", json=predict).status_code == 200
        assert client.get("/readyz").status_code == 200
        assert "featurestream_online_read_errors_total 4.0" in client.get("/metrics").text


def test_push_validates_and_publishes(serving_settings: Settings, repo: FeatureRepo, config: ServingConfig,
                                      kafka_bootstrap: str) -> None:
    settings = serving_settings.model_copy(update={"kafka": kafka_bootstrap, "api_keys": {"app": SecretStr(WRITER)}})
    key = {"X-API-Key": WRITER}
    good = {"user_id": "u1", "amount": 3.5, "country": "US", "ts": 1_767_225_600_000}
    with TestClient(create_app(settings, repo, config=config), raise_server_exceptions=False) as client:
        ok = client.post("/v1/push/clicks", json={"events": [good, {**good, "user_id": "u2"}]}, headers=key)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"published": 2, "errors": []}
        partial = client.post("/v1/push/clicks", json={"events": [good, {"user_id": "u3"}]}, headers=key)
        assert partial.status_code == 207
        assert partial.json()["published"] == 1
        assert partial.json()["errors"][0]["index"] == 1
        none = client.post("/v1/push/clicks", json={"events": [{"amount": "x"}]}, headers=key)
        assert none.status_code == 422
        assert client.post("/v1/push/ghost", json={"events": [good]}, headers=key).status_code == 404
        batch = client.post("/v1/push/profiles", json={"events": [good]}, headers=key)
        assert batch.status_code == 404
        assert "batch source" in batch.json()["detail"]
        assert client.post("/v1/push/clicks", json={"events": []}, headers=key).status_code == 422


def test_push_without_kafka_is_503(serving_settings: Settings, repo: FeatureRepo, config: ServingConfig) -> None:
    settings = serving_settings.model_copy(update={"api_keys": {"app": SecretStr(WRITER)}})
    with TestClient(create_app(settings, repo, config=config), raise_server_exceptions=False) as client:
        response = client.post("/v1/push/clicks", json={"events": [{"user_id": "u"}]}, headers={"X-API-Key": WRITER})
        assert response.status_code == 503
        assert "FEATURESTREAM_KAFKA" in response.json()["detail"]


def test_a_redis_cluster_node_down_answers_503_fast_and_recovers(serving_settings: Settings, repo: FeatureRepo,
                                                                 config: ServingConfig, tmp_path: Path) -> None:
    """The node owning an entity's keys stops: its reads answer 503 (not a 500, not a hang), readiness fails,
    and all answers come back once the node is back in the cluster."""
    procs, ports = start_cluster(tmp_path)
    try:
        settings = serving_settings.model_copy(update={"redis": f"redis://127.0.0.1:{ports[0]}/0",
                                                       "redis_cluster": True})
        cluster = redis.RedisCluster(host="127.0.0.1", port=ports[0])
        node = cluster.get_node_from_key(hash_tag(last.source.name, partition_for("u", last.source.partitions)))
        cluster.close()
        victim = ports.index(node.port)
        features = {"features": ["last:amount"], "entities": [{"user_id": "u"}]}
        with TestClient(create_app(settings, repo, config=config), raise_server_exceptions=False) as client:
            assert client.post("/v1/features", json=features).status_code == 200
            assert client.get("/readyz").status_code == 200
            procs[victim].terminate()
            procs[victim].wait()
            for _ in range(2):
                start = time.perf_counter()
                response = client.post("/v1/features", json=features)
                assert response.status_code == 503, response.text
                assert time.perf_counter() - start < 1.5
                assert "Redis is unreachable" in response.json()["detail"]
            assert client.get("/readyz").status_code == 503
            procs[victim] = start_node(tmp_path, ports[victim])
            wait_cluster_ok(ports)
            deadline = time.monotonic() + 10
            while client.post("/v1/features", json=features).status_code != 200:
                assert time.monotonic() < deadline, "the API did not recover after the node came back"
                time.sleep(0.1)
            assert client.get("/readyz").status_code == 200
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
