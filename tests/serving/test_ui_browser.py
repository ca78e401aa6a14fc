"""The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

The API runs with uvicorn on a free port against the real Redis and broker,
with the card-fraud repo applied, an event log, and a production model. The
page must show the feature views, a freshness value, the model version and
the latency and served features of the requests the test made, and draw its
charts; the screenshot lands in the test's tmp dir (or in
`$FEATURESTREAM_TEST_SCREENSHOTS` when set).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from feature_store.settings import Settings
from tests.serving.test_ui import build_stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    """The serving app (with the dashboard) on 127.0.0.1, in a thread of this process."""
    from serving.app import create_app
    from serving.state import ServingConfig

    build_stack(settings)
    _write_monitor_report(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(settings, config=ServingConfig(history_bucket_s=0.5))  # chart points every 0.5 s
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/dashboard", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("the API did not start within 30 s")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(15)


def _write_monitor_report(settings: Settings) -> None:
    """The drift report the worker's monitor hub keeps in Redis for a service, and a worker's status report."""
    import orjson
    import redis

    from feature_store.online import KeyLayout
    from feature_store.training.live import LiveKeys

    def drift(feature: str, psi: float, status: str) -> dict[str, object]:
        return {"feature": feature, "kind": "numeric", "psi": psi, "ks_statistic": psi / 2, "ks_p_value": 0.01,
                "served_count": 500, "served_null_rate": 0.0, "status": status}

    report = {"service": "fraud_detection", "status": "drift", "features": {
        "user_spend__amount_sum_1h": drift("user_spend__amount_sum_1h", 0.04, "ok"),
        "user_spend__txn_count_5m": drift("user_spend__txn_count_5m", 0.31, "drift")}}
    worker = {"worker": "host-1:4242:abc123", "group": "featurestream-worker", "started_at": 0, "every_s": 5.0,
              "updated_at": time.time_ns() // 1_000_000, "events_per_s": 9.6, "events": 1200, "dead_letters": 30,
              "partitions": [{"source": "transactions", "partition": p, "next_offset": 300, "lag": p} for p in (0, 1)]}
    with redis.Redis.from_url(str(settings.redis)) as client:
        client.set(LiveKeys("fs").monitor("fraud_detection"), orjson.dumps(report))
        client.hset(KeyLayout("fs").workers_key, "host-1:4242:abc123", orjson.dumps(worker))


def test_dashboard_shows_views_freshness_and_model_versions(api_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium (scripts/bootstrap.sh does)"
    errors: list[str] = []
    shot = tmp_path / "dashboard.png"
    for _ in range(30):  # traffic for the latency table and charts
        reply = httpx.post(f"{api_url}/v1/features", json={"features": ["user_spend:txn_count_1h"],
                                                            "entities": [{"user_id": "u1"}]})
        assert reply.status_code == 200, reply.text
    for _ in range(5):
        reply = httpx.post(f"{api_url}/v1/predict/fraud", json={
            "entities": [{"user_id": "u1", "merchant_id": "m1"}], "request": {"amount": 20.0}})
        assert reply.status_code == 200, reply.text
    time.sleep(1.2)  # two latency points closed
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{api_url}/ui")
            page.wait_for_selector("body[data-loaded=true]", timeout=15_000)
            views = page.inner_text("#views")
            for name in ("user_spend", "merchant_activity", "user_last_txn", "user_profile"):
                assert name in views
            freshness = page.inner_text("#views tr[data-view=user_spend] td.freshness")
            assert re.fullmatch(r"\d+(\.\d)? (s|min)", freshness), freshness
            assert page.inner_text("#models tr[data-model=fraud] td.model-version") == "v1"
            answered = page.inner_text("#models tr[data-model=fraud] td.predictions")
            assert re.fullmatch(r"\d+\.\d \(100\.0 % fallback\)", answered), answered  # u1 lacks features
            assert "production" in page.inner_text("#models")
            assert page.locator("#freshness-chart canvas").count() >= 1, "the freshness chart is drawn"
            latency = page.inner_text('#latency tr[data-route="POST /v1/features"]')
            assert re.search(r"\d+\.\d+ ms", latency), latency
            assert page.locator("#latency-chart canvas").count() >= 1, "the latency chart is drawn"
            served = page.inner_text('#served tr[data-feature="user_spend:txn_count_1h"]')
            assert re.search(r"\d+\.\d %", served), served
            worker = page.inner_text('#workers tr[data-worker="host-1:4242:abc123"]')
            assert "transactions:1 (1)" in worker
            assert "ok" in worker
            assert page.inner_text('#workers tr[data-worker="host-1:4242:abc123"] td.lag') == "1"
            drift = page.inner_text("#drift")
            assert "user_spend__txn_count_5m" in drift
            assert "drift" in drift
            assert page.locator("#drift-chart rect").count() == 2
            page.screenshot(path=str(shot), full_page=True)
            # a drawn chart whose data runs out (e.g. no events for 15 minutes) gives way to its empty text
            page.evaluate("timeChart('latency-chart', 'ms', [], [1, 2], ['p50', 'p99'], 'nothing to chart')")
            assert page.inner_text("#latency-chart") == "nothing to chart"
        finally:
            browser.close()
    assert errors == []
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("FEATURESTREAM_TEST_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
