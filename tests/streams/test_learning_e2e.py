"""End to end: concept drift in live traffic -> detected -> online model adapts -> challenger promoted
with two keys -> rolled back; every step checked over HTTP.

Real pieces: the serving app (in process, TestClient) with its prediction log on the session broker,
`POST /v1/labels` onto the labels topic, a `featurestream worker` subprocess (Faust app with the label
and prediction-log agents) on the session broker and this test's Redis DB, the model registry on disk.
The worker is killed and restarted once: the learner resumes from its last snapshot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from river import linear_model, optim, preprocessing
from starlette.testclient import TestClient

import feature_store.examples.card_fraud.features as card_fraud
from feature_store.models import ModelRegistry
from feature_store.repo import load_repo
from feature_store.settings import Settings, load_settings
from feature_store.training import AcceptanceGate, OnlineLearner, RunStore, train_model
from serving import ServingConfig, create_app
from tests.training.data import fraud_rows, fraud_table

ALICE, BOB, APP = "alice-key-1", "bob-key-2", "app-key-3"
MODEL = "fraud_online"


@pytest.fixture
def e2e_settings(settings: Settings, unique: str) -> Settings:
    return load_settings(**{**settings.model_dump(), "api_keys": {"app": APP},
                            "admin_keys": {"alice": ALICE, "bob": BOB}, "online_prefix": f"t{unique}",
                            "worker_group": f"g{unique}"})


def _worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FEATURESTREAM_")}
    env.update({
        "FEATURESTREAM_KAFKA": str(settings.kafka), "FEATURESTREAM_REDIS": str(settings.redis),
        "FEATURESTREAM_DATA_DIR": str(settings.data_dir), "FEATURESTREAM_REGISTRY": str(settings.registry),
        "FEATURESTREAM_ONLINE_PREFIX": settings.online_prefix, "FEATURESTREAM_WORKER_GROUP": settings.worker_group,
        "FEATURESTREAM_LOG_LEVEL": "WARNING", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    })
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from featurestream.cli import main; main()", "worker",
             "--repo", card_fraud.__file__], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _until(what: str, check: Callable[[], Any], timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}; worker log tail:\n{tail}")


class Traffic:
    """Predictions and their labels through the API, from generated rows."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.sent = 0

    def send(self, rows: list[dict[str, float]], batch: int = 200) -> list[int]:
        versions = []
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            body = {"entities": [{"user_id": f"u{(self.sent + i) % 97}"} for i in range(len(chunk))],
                    "request": [{"ratio": r["ratio"], "foreign": r["foreign"]} for r in chunk]}
            answer = self.client.post(f"/v1/predict/{MODEL}", json=body, headers={"X-API-Key": APP})
            assert answer.status_code == 200, answer.text
            predictions = answer.json()["predictions"]
            versions += [p["model_version"] for p in predictions]
            now = time.time_ns() // 1_000_000
            labels = [{"request_id": p["request_id"], "event_time": now, "label": r["label"]}
                      for p, r in zip(predictions, chunk, strict=True)]
            sent = self.client.post("/v1/labels", json={"labels": labels}, headers={"X-API-Key": APP})
            assert sent.status_code == 202, sent.text
            self.sent += len(chunk)
        return versions


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


def test_concept_drift_adapt_promote_rollback(e2e_settings: Settings, unique: str, worker_log: Path) -> None:
    settings = e2e_settings
    registry = ModelRegistry.from_settings(settings)
    # v1: a learner pre-trained in batch on the old relation; gated against a rule, registered, declared online
    learner = OnlineLearner(MODEL, preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.SGD(0.1)), window=200, snapshot_every=400, history_every=50)
    trained = train_model(MODEL, learner, fraud_table(1500, seed=11), label="label", registry=registry,
                          runs=RunStore.from_settings(settings), baseline="foreign", gate=AcceptanceGate(),
                          features=["ratio", "foreign"], params={"online": True}, fallback="0.5",
                          data_dir=settings.data_dir)  # saves the training reference for drift checks
    assert trained.version is not None, trained.decision.reason
    assert trained.version.version == 1

    worker = _worker(settings, worker_log)
    try:
        app = create_app(settings, load_repo(card_fraud.__file__),
                         config=ServingConfig(key_prefix=settings.online_prefix))
        with TestClient(app) as client:
            admin = {"alice": {"X-API-Key": ALICE}, "bob": {"X-API-Key": BOB}}
            ok = client.post(f"/v1/models/{MODEL}/versions/1/promote", headers=admin["alice"],
                             json={"stage": "production", "reason": "batch-trained, passed the gate"})
            assert ok.status_code == 200, ok.text

            def live() -> dict[str, Any]:
                got = client.get(f"/v1/models/{MODEL}/champion-challenger", headers={"X-API-Key": APP})
                assert got.status_code == 200, got.text
                return got.json()  # type: ignore[no-any-return]

            def seen(n: int) -> Callable[[], bool]:
                return lambda: (live().get("learner") or {}).get("labels_seen", 0) >= n

            traffic = Traffic(client)
            base = learner.labels_seen  # labels the pre-trained learner had seen (its batch fit)
            # phase A: the relation the model was trained on
            assert set(traffic.send(fraud_rows(400, seed=12))) == {1}
            _until("the learner to see phase A", seen(base + 400), 90, worker_log)
            before = live()["learner"]["metrics"]["rolling_accuracy"]
            assert before > 0.75

            # phase B: concept drift (the label relation flips)
            traffic.send(fraud_rows(1000, seed=13, drift=True))
            _until("the learner to see phase B", seen(base + 1400), 90, worker_log)
            status = live()
            history = [acc for n, acc in status["learner"]["history"] if n > base + 400]
            assert min(history) < before - 0.2, history  # the old relation is now wrong ...
            assert history[-1] > min(history) + 0.1, history  # ... and the online model recovers
            # drift was detected on the champion's error stream and alerted
            report = client.get(f"/v1/monitoring/{MODEL}", headers={"X-API-Key": APP}).json()
            assert report["report"]["streams"]["error"]["drifts"] >= 1, report
            assert any(a["kind"] == "stream_drift" for a in report["alerts"]), report["alerts"]
            # the learner snapshotted (drift-triggered and periodic) as new staging versions
            versions = client.get(f"/v1/models/{MODEL}", headers={"X-API-Key": APP}).json()["versions"]
            snapshots = [v for v in versions if v["params"].get("snapshot")]
            assert snapshots, versions  # gated against the declared baseline before registration
            runs = client.get("/v1/runs", params={"model": MODEL}, headers={"X-API-Key": APP}).json()["runs"]
            assert any(r["kind"] == "online_snapshot" and "alert" in r["reason"] for r in runs), runs
            challenger = snapshots[-1]["version"]
            assert snapshots[-1]["params"]["label_offsets"]

            # restart the worker (kill -9): the learner resumes from its last snapshot
            _stop(worker, signal.SIGKILL)
            worker = _worker(settings, worker_log)

            # the newest snapshot becomes the challenger and scores live traffic in shadow
            put = client.put(f"/v1/models/{MODEL}/challenger", headers=admin["alice"],
                             json={"version": challenger, "reason": "adapted to the new relation"})
            assert put.status_code == 200, put.text
            time.sleep(2.5)  # the worker re-reads the challenger list every 2 s
            served = traffic.send(fraud_rows(300, seed=14, drift=True))
            assert set(served) == {1}  # shadow scores are never returned
            _until("shadow scores for the challenger",
                   lambda: live()["performance"].get(str(challenger), {}).get("shadow", {}).get("labels", 0) >= 250,
                   120, worker_log)
            status = live()
            assert status["learner"]["version"] >= challenger  # restored from (at least) the last snapshot
            shadow = status["performance"][str(challenger)]["shadow"]
            champion = status["performance"]["1"]["live"]
            assert shadow["accuracy"] > champion["accuracy"], status["performance"]

            # four eyes: alice asks, alice cannot approve, bob approves
            asked = client.post(f"/v1/models/{MODEL}/promotions", headers=admin["alice"],
                                json={"version": challenger, "reason": "beats the champion in shadow"})
            assert asked.status_code == 201, asked.text
            request_id = asked.json()["id"]
            assert asked.json()["metrics"]["performance"][str(challenger)]["shadow"]["accuracy"] > 0.5
            same = client.post(f"/v1/models/{MODEL}/promotions/{request_id}/approve", headers=admin["alice"],
                               json={"reason": "self-approval"})
            assert same.status_code == 403, same.text
            assert client.get(f"/v1/models/{MODEL}", headers={"X-API-Key": APP}).json()["production_version"] == 1
            approved = client.post(f"/v1/models/{MODEL}/promotions/{request_id}/approve", headers=admin["bob"],
                                   json={"reason": "checked the shadow metrics"})
            assert approved.status_code == 200, approved.text
            assert client.get(f"/v1/models/{MODEL}", headers={"X-API-Key": APP}).json()["production_version"] \
                == challenger
            assert set(traffic.send(fraud_rows(20, seed=15, drift=True))) == {challenger}
            assert live()["challenger"] is None

            # one call rolls back
            back = client.post(f"/v1/models/{MODEL}/rollback", headers=admin["bob"], json={"reason": "drill"})
            assert back.status_code == 200, back.text
            assert back.json()["version"] == 1
            assert set(traffic.send(fraud_rows(20, seed=16, drift=True))) == {1}
            audit = client.get(f"/v1/models/{MODEL}/promotions", headers={"X-API-Key": APP}).json()
            assert [(e["action"], e["actor"]) for e in audit["audit"]] == [
                ("challenger", "alice"), ("request", "alice"), ("approve", "bob")]
            assert audit["requests"][0]["metrics"]["performance"]
            assert any(s["action"] == "rollback" and s["actor"] == "bob" for s in audit["stages"])
            runs = client.get("/v1/runs", params={"model": MODEL}, headers={"X-API-Key": APP}).json()["runs"]
            assert {r["kind"] for r in runs} == {"batch", "online_snapshot"}
            table = client.get("/v1/runs/compare", params={"ids": [runs[0]["run_id"], runs[-1]["run_id"]]},
                               headers={"X-API-Key": APP}).json()
            assert any(row["field"] == "kind" for row in table["rows"])
    finally:
        _stop(worker)
