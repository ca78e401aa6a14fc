"""`featurestream materialize` on the card-fraud example, then `FeatureStore.get_online_features` at END
answers what `get_training_set` computes at END (every feature of the service, every user)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from feature_store.online import FeatureValue
from feature_store.repo import load_repo
from feature_store.settings import load_settings
from feature_store.store import FeatureStore
from featurestream.cli import app
from featurestream.commands.materialize import parse_time
from tests.feature_store.test_training_set_cli import REPO_FILE, _card_data
from tests.oracle import close


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def test_materialize_cli_then_online_equals_offline(tmp_path: Path, redis_db_url: str, unique: str) -> None:
    events, _, _ = _card_data(tmp_path)
    end = events[len(events) // 2].event_time + 1
    assert end is not None
    env = {"FEATURESTREAM_DATA_DIR": str(tmp_path), "FEATURESTREAM_REGISTRY": str(tmp_path / "registry.db"),
           "FEATURESTREAM_REDIS": redis_db_url, "FEATURESTREAM_ONLINE_PREFIX": unique}
    args = ["materialize", "--start", _iso(end - 3_600_000), "--end", _iso(end), "--repo", str(REPO_FILE)]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "keys" in result.output

    settings = load_settings(data_dir=tmp_path, registry=tmp_path / "registry.db", redis=redis_db_url,
                             online_prefix=unique)
    store = FeatureStore(settings, load_repo(REPO_FILE))
    users = [*sorted({e.values["user_id"] for e in events}), "u_nobody"]
    merchants = sorted({e.values["merchant_id"] for e in events})
    rows = [{"user_id": u, "merchant_id": merchants[i % len(merchants)]} for i, u in enumerate(users)]

    async def read() -> list[dict[str, FeatureValue]]:
        try:
            return await store.get_online_features("fraud_detection", rows, t_ms=end)
        finally:
            await store.aclose()

    online = asyncio.run(read())
    offline = store.get_training_set(pa.table({"user_id": users, "merchant_id": [r["merchant_id"] for r in rows],
                                               "event_timestamp": [end] * len(users), "amount": [1.0] * len(users)}),
                                     service="fraud_detection")
    for got, want in zip(online, offline.to_pylist(), strict=True):
        for ref, value in got.items():
            assert close(value.value, want[ref.replace(":", "__")]), (ref, got, want)


@pytest.mark.parametrize(("text", "ms"), [("2026-01-01T00:00:00Z", 1_767_225_600_000),
                                          ("2026-01-01T01:00:00+01:00", 1_767_225_600_000),
                                          ("2026-01-01", 1_767_225_600_000), ("1767225600000", 1_767_225_600_000)])
def test_times_read_as_utc(text: str, ms: int) -> None:
    assert parse_time(text, "start") == ms


def test_bad_range_exits_1(tmp_path: Path) -> None:
    env = {"FEATURESTREAM_DATA_DIR": str(tmp_path), "FEATURESTREAM_REGISTRY": str(tmp_path / "registry.db"),
           "FEATURESTREAM_REDIS": "redis://127.0.0.1:1/0"}
    result = CliRunner().invoke(app, ["materialize", "--start", "yesterday", "--repo", str(REPO_FILE)], env=env)
    assert result.exit_code != 0
    assert "is not a time" in str(result.exception)
