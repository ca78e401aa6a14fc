"""`POST /v1/features` against the real Redis: values, statuses, ages, staleness policies, derived, errors."""

from __future__ import annotations

import gc
import time

import pytest
import redis
from starlette.testclient import TestClient

from feature_store.online import KeyLayout
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from serving import ServingConfig, create_app
from tests.serving.conftest import OnlineWriter, last, profile, spend

pytestmark = pytest.mark.integration


def _now() -> int:
    return time.time_ns() // 1_000_000


def test_service_vector_with_every_status(client: TestClient, store: OnlineWriter) -> None:
    now = _now()
    store.events(spend, "u1", [(now - 60_000, {"amount": 10.0}), (now - 30_000, {"amount": 30.0})])
    store.latest(last, "u1", now - 2 * 3_600_000, [5.0, "FR"])  # 2 h old: stale under the 10 min policies
    response = client.post("/v1/features", json={"service": "svc", "entities": [{"user_id": "u1"}, {"user_id": "u2"}],
                                                 "request": {"amount": 40.0}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["read_at"] >= now
    u1, u2 = (r["features"] for r in body["results"])
    assert u1["spend:count_1h"]["value"] == 2
    assert u1["spend:count_1h"]["status"] == "present"
    assert 30_000 <= u1["spend:count_1h"]["age_ms"] < 40_000
    assert u1["spend:amount_sum_1h"]["value"] == pytest.approx(40.0)
    assert u1["spend:amount_mean_1h"]["value"] == pytest.approx(20.0)
    assert u1["last:amount"] == {"value": 5.0, "status": "stale", "age_ms": u1["last:amount"]["age_ms"]}
    assert u1["last:amount"]["age_ms"] >= 2 * 3_600_000
    assert u1["last:country"]["status"] == "stale"
    assert u1["last:country"]["value"] is None  # policy 'default': the declared default
    assert u1["profile:age"] == {"value": None, "status": "missing", "age_ms": None}
    assert u1["ratio"]["value"] == pytest.approx(2.0)  # 40 / mean 20
    # an entity without events: window defaults, latest missing, derived falls back to coalesce
    assert u2["spend:count_1h"] == {"value": 0, "status": "default", "age_ms": None}
    assert u2["spend:amount_sum_1h"] == {"value": None, "status": "default", "age_ms": None}
    assert u2["last:amount"]["status"] == "missing"
    assert u2["ratio"]["value"] == pytest.approx(1.0)


def test_fresh_values_are_present(client: TestClient, store: OnlineWriter) -> None:
    now = _now()
    store.latest(last, "u3", now - 1_000, [7.5, "US"])
    store.latest(profile, "u3", now - 10 * 86_400_000, [42])
    body = client.post("/v1/features", json={"features": ["last:amount", "last:country", "profile:age"],
                                             "entities": [{"user_id": "u3"}]}).json()
    values = body["results"][0]["features"]
    assert values["last:amount"]["value"] == 7.5
    assert values["last:amount"]["status"] == "present"
    assert values["last:country"]["value"] == "US"
    assert values["profile:age"]["value"] == 42  # no service: no staleness policy applies
    assert values["profile:age"]["status"] == "present"


def test_reject_policy_answers_409(client: TestClient, store: OnlineWriter) -> None:
    store.latest(last, "u4", _now() - 3_600_000, [1.0, "US"])
    response = client.post("/v1/features", json={"service": "strict", "entities": [{"user_id": "u4"}]})
    assert response.status_code == 409
    assert "policy reject" in response.json()["detail"]
    assert client.post("/v1/features", json={"service": "strict", "entities": [{"user_id": "nobody"}]}
                       ).status_code == 200


def test_per_entity_request_fields(client: TestClient, store: OnlineWriter) -> None:
    now = _now()
    store.events(spend, "a", [(now - 1_000, {"amount": 10.0})])
    body = client.post("/v1/features", json={
        "service": "svc", "entities": [{"user_id": "a"}, {"user_id": "b"}],
        "request": [{"amount": 5.0}, {"amount": None}]}).json()
    assert body["results"][0]["features"]["ratio"]["value"] == pytest.approx(0.5)
    assert body["results"][1]["features"]["ratio"] == {"value": None, "status": "missing", "age_ms": None}


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"service": "nope", "entities": [{"user_id": "u"}]}, 404, "unknown feature service 'nope'"),
        ({"features": ["spend:nope"], "entities": [{"user_id": "u"}]}, 404, "has no feature 'nope'"),
        ({"features": ["ghost:x"], "entities": [{"user_id": "u"}]}, 404, "unknown feature view 'ghost'"),
        ({"features": ["spend"], "entities": [{"user_id": "u"}]}, 422, "is not a 'view:feature' reference"),
        ({"features": ["last:amount", "last:amount"], "entities": [{"user_id": "u"}]}, 422, "listed twice"),
        ({"service": "svc", "entities": [{"merchant": "m"}]}, 422, "has no 'user_id'"),
        ({"service": "svc", "entities": [{"user_id": ""}]}, 422, "non-empty string"),
        ({"service": "svc", "entities": []}, 422, "entities"),
        ({"service": "svc", "features": ["last:amount"], "entities": [{"user_id": "u"}]}, 422, "exactly one"),
        ({"entities": [{"user_id": "u"}]}, 422, "exactly one"),
        ({"service": "svc", "entities": [{"user_id": "u"}], "request": {"amount": "x"}}, 422,
         "request.amount must be float"),
        ({"service": "svc", "entities": [{"user_id": "u"}], "request": {"amt": 1}}, 422, "'amt' is not declared"),
        ({"service": "svc", "entities": [{"user_id": "u"}], "request": [{}, {}]}, 422, "2 items for 1 entities"),
        ({"service": "svc", "entities": [{"user_id": "u"}], "extra": 1}, 422, "extra"),
        ({"service": "svc", "entities": [{"user_id": f"u{i}"} for i in range(51)]}, 413, "at most 50"),
    ],
)
def test_bad_requests_say_what_to_fix(client: TestClient, payload: dict[str, object], status: int,
                                      fragment: str) -> None:
    response = client.post("/v1/features", json=payload)
    assert response.status_code == status, response.text
    assert fragment in response.text


def test_not_json_is_422(client: TestClient) -> None:
    response = client.post("/v1/features", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_metrics_count_statuses_and_latency(client: TestClient, store: OnlineWriter) -> None:
    store.latest(last, "m1", _now() - 500, [1.0, "US"])
    client.post("/v1/features", json={"features": ["last:amount"], "entities": [{"user_id": "m1"},
                                                                                {"user_id": "m2"}]})
    text = client.get("/metrics").text
    assert 'featurestream_feature_values_total{feature="last:amount",status="present"} 1.0' in text
    assert 'featurestream_feature_values_total{feature="last:amount",status="missing"} 1.0' in text
    assert 'featurestream_http_request_seconds_count{method="POST",route="/v1/features",status="200"} 1.0' in text
    assert "featurestream_online_read_seconds_count 1.0" in text
    assert 'featurestream_feature_age_seconds_count{feature="last:amount"} 1.0' in text


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert client.get("/openapi.json").status_code == 200


def test_features_from_a_redis_cluster(serving_settings: Settings, repo: FeatureRepo, config: ServingConfig,
                                       redis_cluster_url: str) -> None:
    """FEATURESTREAM_REDIS_CLUSTER: the API reads each entity's keys from the node of their hash tag."""
    on_cluster = serving_settings.model_copy(update={"redis": redis_cluster_url, "redis_cluster": True})
    cluster = redis.RedisCluster.from_url(redis_cluster_url)
    store = OnlineWriter(cluster, KeyLayout(config.key_prefix or "fs"))
    now = _now()
    users = [f"u{i}" for i in range(8)]  # both partitions of the source
    for i, user in enumerate(users):
        store.events(spend, user, [(now - 60_000, {"amount": 10.0 * i}), (now - 30_000, {"amount": 2.0})])
        store.latest(last, user, now - 1_000, [float(i), "FR"])
    try:
        with TestClient(create_app(on_cluster, repo, config=config), raise_server_exceptions=False) as client:
            assert client.get("/readyz").status_code == 200
            response = client.post("/v1/features", json={
                "features": ["spend:count_1h", "spend:amount_sum_1h", "last:amount"],
                "entities": [{"user_id": u} for u in users]})
            assert response.status_code == 200, response.text
            for i, result in enumerate(response.json()["results"]):
                values = result["features"]
                assert values["spend:count_1h"]["value"] == 2
                assert values["spend:amount_sum_1h"]["value"] == pytest.approx(10.0 * i + 2.0)
                assert values["last:amount"] == {"value": float(i), "status": "present",
                                                 "age_ms": values["last:amount"]["age_ms"]}
    finally:
        cluster.close()


def test_a_many_entity_read_starts_no_garbage_collection(client: TestClient, store: OnlineWriter) -> None:
    """Its thousands of objects die by refcount once answered; with Python's default threshold (700 net new
    objects) each such read started several young collections, and every ~1,000 of those a full one (~8 ms
    at 100 entities in bench/online.py, a p99 of its own)."""
    now = _now()
    entities = [{"user_id": f"u{i}"} for i in range(50)]
    for i, entity in enumerate(entities):
        store.events(spend, entity["user_id"], [(now - 60_000 - i, {"amount": float(i)})])
        store.latest(last, entity["user_id"], now - 1_000, [float(i), "FR"])
    body = {"service": "svc", "entities": entities, "request": {"amount": 1.0}}
    assert client.post("/v1/features", json=body).status_code == 200  # warm: caches filled
    started: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(count)
    try:
        for _ in range(20):
            response = client.post("/v1/features", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["results"][49]["features"]["spend:count_1h"]["value"] == 1
    finally:
        gc.callbacks.remove(count)
    assert len(started) <= 2, f"{len(started)} collections in 20 reads (generations {started})"
