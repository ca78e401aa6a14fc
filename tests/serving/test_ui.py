"""The dashboard's files and its `GET /v1/dashboard` summary, on the real app with the card-fraud repo.

`build_stack` writes what a running deployment holds (applied registry, event
log with applied/late/invalid events, profiles, a registered model) so the
browser test can reuse it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from feature_store.examples import CARD_FRAUD
from feature_store.examples.card_fraud.data import TransactionGenerator, profiles_table
from feature_store.offline.layout import log_file_path
from feature_store.repo import load_repo
from feature_store.settings import Settings

LOG_TYPES = pa.schema([
    ("transaction_id", pa.string()), ("user_id", pa.string()), ("merchant_id", pa.string()),
    ("amount", pa.float64()), ("currency", pa.string()), ("country", pa.string()), ("channel", pa.string()),
    ("ts", pa.int64()), ("__event_time", pa.int64()), ("__ingest_time", pa.int64()), ("__partition", pa.int32()),
    ("__offset", pa.int64()), ("__status", pa.string()), ("__reason", pa.string()),
])


def build_stack(settings: Settings, *, events: int = 1200, now_ms: int | None = None) -> dict[str, Any]:
    """Registry applied, an event log of the last ~2 minutes, profiles, one production model; returns counts."""
    from feature_store.models import ModelRegistry
    from feature_store.registry import Registry

    now = now_ms or time.time_ns() // 1_000_000
    repo = load_repo(CARD_FRAUD)
    Registry(settings.registry).apply(repo, applied_by="test")
    rng = random.Random(3)
    generated = [e for e, _ in TransactionGenerator(users=50, start_ms=now - events * 100, spacing_ms=100,
                                                    seed=5).events(events)]
    statuses = ["invalid" if i % 40 == 0 else "late" if i % 97 == 0 else "applied" for i in range(events)]
    rows: dict[str, list[Any]] = {name: [] for name in LOG_TYPES.names}
    for i, (event, status) in enumerate(zip(generated, statuses, strict=True)):
        for key in ("transaction_id", "user_id", "merchant_id", "amount", "currency", "country", "channel", "ts"):
            rows[key].append(event[key])
        rows["__event_time"].append(event["ts"])
        rows["__ingest_time"].append(min(now, int(event["ts"]) + rng.randrange(200, 2_000)))
        rows["__partition"].append(0)
        rows["__offset"].append(i)
        rows["__status"].append(status)
        rows["__reason"].append(None if status == "applied" else f"{status} in test")
    path = log_file_path(settings.data_dir, "transactions", 0, 0, events - 1, now)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows, schema=LOG_TYPES), path)
    profiles = settings.data_dir / "sources" / "profiles" / "profiles.parquet"
    profiles.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(profiles_table(50, start_ms=now - 60 * 86_400_000), profiles)
    models = ModelRegistry.from_settings(settings)
    version = models.register(
        "fraud", "0.02 + 0.001 * amount", flavor="rule", feature_service="fraud_detection", fallback="0.05",
        features=["amount"], metrics={"roc_auc": 0.81, "log_loss": 0.29},
        training_set_ref="training/fraud_detection.parquet", data_range=(now - 3_600_000, now), actor="test")
    models.promote("fraud", version.version, "production", actor="test")
    applied = [e for e, s in zip(generated, statuses, strict=True) if s == "applied"]
    return {"applied": len(applied), "late": statuses.count("late"), "invalid": statuses.count("invalid"),
            "newest_applied": max(int(e["ts"]) for e in applied), "now": now}


@pytest.fixture
def offline_settings(tmp_path: Path) -> Settings:
    from feature_store.settings import load_settings

    return load_settings(data_dir=tmp_path / "data", registry=tmp_path / "registry.db")


@pytest.fixture
def client(offline_settings: Settings) -> Iterator[TestClient]:
    """The dashboard router alone, on an app whose state names the settings (no Redis needed)."""
    from fastapi import FastAPI

    from serving.routers import ui

    app = FastAPI()
    app.state.settings = offline_settings
    app.include_router(ui.router)
    with TestClient(app) as test_client:
        yield test_client


def test_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for name in ("app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css"):
        assert f"/ui/static/{name}" in page.text
        assert client.get(f"/ui/static/{name}").status_code == 200
    assert client.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("name", ["..%2Fui.py", ".hidden", "nothing.js", "LICENSE.uPlot.txt%2F..", "x.py"])
def test_nothing_outside_the_static_files_is_served(client: TestClient, name: str) -> None:
    assert client.get(f"/ui/static/{name}").status_code == 404


def test_summary_before_any_apply_names_what_is_missing(client: TestClient) -> None:
    body = client.get("/v1/dashboard").json()
    assert body["views"] == []
    assert any("featurestream apply" in m for m in body["missing"])
    assert (body["workers"], body["serving"]) == ([], None), "no Redis to read reports from, no serving app"


def test_summary_counts_freshness_versions_and_models(client: TestClient, offline_settings: Settings) -> None:
    stack = build_stack(offline_settings)
    body = client.get("/v1/dashboard").json()
    assert {v["name"] for v in body["views"]} == {"user_spend", "merchant_activity", "user_last_txn", "user_profile"}
    assert all(v["version"] == 1 for v in body["views"])
    assert body["services"][0]["name"] == "fraud_detection"
    source = next(s for s in body["sources"] if s["name"] == "transactions")
    assert (source["applied"], source["late"], source["invalid"]) == (stack["applied"], stack["late"],
                                                                      stack["invalid"])
    assert source["last_event_time"] == stack["newest_applied"]
    lag_s = (body["generated_at"] - stack["newest_applied"]) / 1000
    assert source["freshness_s"] == pytest.approx(lag_s)
    assert source["series"], "the freshness chart needs points"
    assert sum(point[3] for point in source["series"]) * 10 == pytest.approx(stack["applied"])
    spend = next(v for v in body["views"] if v["name"] == "user_spend")
    assert spend["freshness_s"] == source["freshness_s"]
    [model] = body["models"]
    assert (model["name"], model["version"], model["stage"]) == ("fraud", 1, "production")
    assert model["metrics"]["roc_auc"] == 0.81
    assert model["lineage"]["service"] == "fraud_detection"
