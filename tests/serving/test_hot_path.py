"""The hot routes answer the same through `HotRoutes` and through FastAPI's own routing (the fallback)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from tests.serving.conftest import OnlineWriter, spend

pytestmark = pytest.mark.integration


@pytest.fixture
def rooted(app: FastAPI) -> Iterator[TestClient]:
    """A client under a root path: `/api/v1/...` misses `HotRoutes` (exact paths only), so FastAPI's router
    serves it, while `/v1/...` takes the hot path."""
    with TestClient(app, root_path="/api", raise_server_exceptions=False) as c:
        yield c


def test_both_paths_answer_alike(rooted: TestClient, store: OnlineWriter) -> None:
    now = int(time.time() * 1000)
    store.events(spend, "u1", [(now - 1000, {"amount": 5.0}), (now - 2000, {"amount": 7.0})])
    payloads = [
        ("/v1/features", {"features": ["spend:count_1h", "spend:amount_sum_1h"], "entities": [{"user_id": "u1"}]}),
        ("/v1/features", {"service": "svc", "entities": [{"user_id": "u1"}], "request": {"amount": "x"}}),
        ("/v1/features", {"entities": [{"user_id": "u1"}]}),
        ("/v1/predict/ghost", {"entities": [{"user_id": "u1"}]}),
        ("/v1/predict/ghost?version=0", {"entities": [{"user_id": "u1"}]}),
        ("/v1/predict/ghost?version=x", {"entities": [{"user_id": "u1"}]}),
        ("/v1/predict/ghost", {"entities": []}),
    ]
    for path, payload in payloads:
        hot = rooted.post(path, json=payload)
        slow = rooted.post(f"/api{path}", json=payload)
        assert hot.status_code == slow.status_code, (path, payload, hot.text, slow.text)
        if hot.status_code == 200:
            hot_body, slow_body = hot.json(), slow.json()
            for body in (hot_body, slow_body):  # read times differ by the clock
                del body["read_at"]
                for row in body["results"]:
                    for value in row["features"].values():
                        del value["age_ms"]
            assert hot_body == slow_body
        else:
            assert hot.json() == slow.json(), (path, payload)
    assert rooted.post("/v1/features", content=b"{not json").status_code == 422
    problems = rooted.post("/v1/predict/ghost?version=0", json={"entities": [{"user_id": "u1"}]}).json()["detail"]
    assert problems[0]["field"] == "query.version"
