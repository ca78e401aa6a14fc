"""A running API follows `featurestream apply`: new services are served without a restart, bad ones skipped."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog
from starlette.testclient import TestClient

from feature_store.definitions import FeatureService
from feature_store.registry import DefinitionsWatch, Registry
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from serving import ServingConfig, create_app
from tests.serving.conftest import OnlineWriter, last, profile, spend, svc


def _apply(settings: Settings, *definitions: object) -> None:
    Registry(settings.registry).apply(FeatureRepo.from_definitions([spend, last, profile, svc, *definitions]),
                                      applied_by="test")


def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_api_serves_a_service_applied_after_it_started(serving_settings: Settings, config: ServingConfig,
                                                       store: OnlineWriter) -> None:
    _apply(serving_settings)
    now = time.time_ns() // 1_000_000
    store.latest(last, "u1", now - 1_000, [12.5, "FR"])
    app = create_app(serving_settings, config=ServingConfig(key_prefix=config.key_prefix, definitions_poll_s=0.05))
    body = {"service": "later", "entities": [{"user_id": "u1"}]}
    with TestClient(app, raise_server_exceptions=False) as client, structlog.testing.capture_logs() as logs:
        refused = client.post("/v1/features", json=body)
        assert refused.status_code == 404, refused.text
        assert "later" in refused.json()["detail"]

        _apply(serving_settings, FeatureService(name="later", features=["last:amount", "last:country"]))
        assert _until(lambda: client.post("/v1/features", json=body).status_code == 200), \
            "the applied service was not served within 10 s"
        values = client.post("/v1/features", json=body).json()["results"][0]["features"]
        assert values["last:amount"]["value"] == 12.5
        assert values["last:country"]["value"] == "FR"

        # a service whose derived feature does not compile: logged once, the running definitions stay
        _apply(serving_settings, FeatureService(name="later", features=["last:amount"], derived={"x": "amount +"}))
        assert _until(lambda: any(e["event"] == "definitions_not_reloaded" for e in logs))
        assert client.post("/v1/features", json=body).json()["results"][0]["features"]["last:country"]["value"] \
            == "FR"
    assert [e["event"] for e in logs].count("definitions_not_reloaded") == 1
    assert any(e["event"] == "definitions_reloaded" and "later" in e["services"] for e in logs)


def test_an_app_given_its_definitions_does_not_follow_the_registry(serving_settings: Settings,
                                                                  config: ServingConfig) -> None:
    _apply(serving_settings)
    repo = FeatureRepo.from_definitions([spend, last, profile, svc])
    app = create_app(serving_settings, repo, config=ServingConfig(key_prefix=config.key_prefix,
                                                                  definitions_poll_s=0.05))
    with TestClient(app, raise_server_exceptions=False) as client:
        _apply(serving_settings, FeatureService(name="later", features=["last:amount"]))
        time.sleep(0.5)
        assert client.post("/v1/features", json={"service": "later", "entities": [{"user_id": "u1"}]}
                           ).status_code == 404


def test_watch_reports_each_apply_once_and_never_creates_a_registry(tmp_path: Path, settings: Settings) -> None:
    ours = settings.model_copy(update={"registry": tmp_path / "registry.db"})
    watch = DefinitionsWatch(ours)
    assert watch.changed() is None
    assert not ours.registry.exists()
    _apply(ours)
    first = watch.changed()
    assert first is not None
    assert "svc" in first.services
    assert watch.changed() is None
    _apply(ours, FeatureService(name="later", features=["last:amount"]))
    second = watch.changed()
    assert second is not None
    assert "later" in second.services
    assert watch.changed() is None
