"""API keys (401 vs 403 per level) and the model registry over HTTP (register, promote, rollback, audit)."""

from __future__ import annotations

import base64
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.testclient import TestClient

from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from serving import ServingConfig, create_app
from serving.deps import app_settings
from tests.serving.conftest import ADMIN, WRITER

pytestmark = pytest.mark.integration

READ_ONLY = "reader-secret-3"


class Half:
    def predict(self, x: list[list[Any]]) -> list[float]:
        return [0.5 for _ in x]


@pytest.fixture
def keyed(serving_settings: Settings, repo: FeatureRepo, config: ServingConfig) -> Iterator[TestClient]:
    settings = serving_settings.model_copy(update={
        "api_keys": {"app": SecretStr(WRITER)}, "admin_keys": {"ops": SecretStr(ADMIN)}})
    with TestClient(create_app(settings, repo, config=config), raise_server_exceptions=False) as client:
        yield client


def _rule(client: TestClient, key: str | None, expression: str = "1", name: str = "m") -> Any:
    headers = {"X-API-Key": key} if key else {}
    return client.post(f"/v1/models/{name}/versions", json={"flavor": "rule", "expression": expression},
                       headers=headers)


def test_open_reads_keyed_writes(client: TestClient) -> None:
    """No keys configured: reads are open, writes and admin calls say how to configure keys."""
    assert client.get("/v1/models").status_code == 200
    response = _rule(client, None)
    assert response.status_code == 401
    assert "FEATURESTREAM_API_KEYS" in response.json()["detail"]


def test_keys_per_level(keyed: TestClient) -> None:
    assert keyed.get("/v1/models").status_code == 401  # api keys configured: reads need a key
    assert keyed.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
    assert keyed.get("/v1/models", headers={"X-API-Key": WRITER}).status_code == 200
    assert keyed.get("/v1/models", headers={"X-API-Key": ADMIN}).status_code == 200
    missing = _rule(keyed, None)
    assert missing.status_code == 401
    assert missing.json()["detail"] == "missing X-API-Key header; send an API key"
    assert missing.headers["WWW-Authenticate"] == "X-API-Key"
    assert _rule(keyed, "wrong").json()["detail"] == "the X-API-Key key is not a known key; check the key you send"
    assert _rule(keyed, WRITER).status_code == 201
    promote = keyed.post("/v1/models/m/versions/1/promote", json={"stage": "production"},
                         headers={"X-API-Key": WRITER})
    assert promote.status_code == 403
    assert "needs an admin key" in promote.json()["detail"]
    assert keyed.post("/v1/models/m/rollback", json={}, headers={"X-API-Key": WRITER}).status_code == 403
    assert keyed.post("/v1/models/m/versions/1/promote", json={"stage": "production"},
                      headers={"X-API-Key": ADMIN}).status_code == 200
    pickled = {"flavor": "sklearn", "artifact_b64": base64.b64encode(pickle.dumps(Half())).decode(),
               "features": ["a"]}
    refused = keyed.post("/v1/models/p/versions", json=pickled, headers={"X-API-Key": WRITER})
    assert refused.status_code == 403
    assert "pickles and need an admin key" in refused.json()["detail"]
    assert keyed.post("/v1/models/p/versions", json=pickled, headers={"X-API-Key": ADMIN}).status_code == 201
    assert keyed.post("/v1/push/clicks", json={"events": [{}]}).status_code == 401
    assert keyed.post("/v1/features", json={"features": ["last:amount"], "entities": [{"user_id": "u"}]}
                      ).status_code == 401


def test_settings_come_from_the_dependency(app: FastAPI, serving_settings: Settings) -> None:
    """Tests (and embedders) swap settings with dependency_overrides."""
    app.dependency_overrides[app_settings] = lambda: serving_settings.model_copy(
        update={"api_keys": {"x": SecretStr(READ_ONLY)}})
    with TestClient(app) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"X-API-Key": READ_ONLY}).status_code == 200


def test_register_promote_rollback_over_http(keyed: TestClient) -> None:
    admin = {"X-API-Key": ADMIN}
    for expression in ("0.1", "0.2"):
        assert _rule(keyed, WRITER, expression, name="fraud").status_code == 201
    bad = keyed.post("/v1/models/fraud/versions", json={"flavor": "rule", "expression": "amount >"},
                     headers=admin)
    assert bad.status_code == 422
    assert "not valid syntax" in bad.json()["detail"]
    assert keyed.post("/v1/models/fraud/versions", json={"flavor": "rule", "expression": "1",
                                                          "feature_service": "ghost"}, headers=admin
                      ).status_code == 404
    assert keyed.post("/v1/models/fraud/versions", json={"flavor": "sklearn"}, headers=admin).status_code == 422
    assert keyed.post("/v1/models/fraud/versions", json={"flavor": "sklearn", "artifact_b64": "!!",
                                                          "features": ["a"]}, headers=admin).status_code == 422
    no_previous = keyed.post("/v1/models/fraud/rollback", json={}, headers=admin)
    assert no_previous.status_code == 409
    for version in (1, 2):
        assert keyed.post(f"/v1/models/fraud/versions/{version}/promote",
                          json={"stage": "production", "reason": f"v{version}"}, headers=admin).status_code == 200
    predict = {"entities": [{"user_id": "u"}]}
    assert keyed.post("/v1/predict/fraud", json=predict, headers=admin).json()["predictions"][0]["prediction"] == 0.2
    rolled = keyed.post("/v1/models/fraud/rollback", json={"reason": "drift"}, headers=admin)
    assert rolled.json()["version"] == 1
    assert keyed.post("/v1/predict/fraud", json=predict, headers=admin).json()["model_version"] == 1
    listing = keyed.get("/v1/models", headers=admin).json()["models"]
    assert listing == [{"name": "fraud", "production_version": 1, "latest_version": 2, "versions": 2,
                        "feature_service": None}]
    shown = keyed.get("/v1/models/fraud", headers=admin).json()
    assert [v["stage"] for v in shown["versions"]] == ["production", "archived"]
    assert shown["audit"][-1]["actor"] == "ops"
    assert shown["audit"][-2]["reason"] == "drift"
    assert keyed.get("/v1/models/fraud/versions/2", headers=admin).json()["sha256"]
    assert keyed.get("/v1/models/ghost", headers=admin).status_code == 404
    assert keyed.get("/v1/models/fraud/versions/7", headers=admin).status_code == 404
    assert keyed.post("/v1/models/fraud/versions/1/promote", json={"stage": "live"}, headers=admin
                      ).status_code == 422


def test_tampered_artifact_is_not_served(app: FastAPI, client: TestClient) -> None:
    registry = app.state.serving.models
    version = registry.register("t", pickle.dumps(Half()), flavor="sklearn", features=["a"])
    registry.promote("t", 1, "production")
    (registry.artifact_dir / version.sha256[:2] / version.sha256).write_bytes(b"evil")
    response = client.post("/v1/predict/t", json={"entities": [{"user_id": "u"}]})
    assert response.status_code == 500
    assert response.json()["error"] == "ModelIntegrityError"
    assert "was modified and is refused" in response.json()["detail"]
