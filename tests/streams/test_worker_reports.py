"""Stream workers' status reports as the dashboard reads them (`feature_store.worker_reports`), on the real Redis.

The workers' side (each report holds the partitions its worker holds, and is removed when it stops) is
tested with the consumer group in `test_end_to_end.test_lag_and_reports_cover_only_the_partitions_a_worker_holds`.
"""

from __future__ import annotations

import orjson
import pytest
import redis

from feature_store.online import KeyLayout
from feature_store.worker_reports import FORGET_AFTER_S, read_reports

pytestmark = pytest.mark.integration

NOW = 1_800_000_000_000


def _report(worker: str, age_s: float, every_s: float = 5.0) -> bytes:
    return orjson.dumps({"worker": worker, "group": "g", "started_at": NOW - 3_600_000,
                         "updated_at": NOW - int(age_s * 1000), "every_s": every_s,
                         "partitions": [{"source": "s", "partition": 0, "next_offset": 7, "lag": 2}]})


def test_reports_are_fresh_stale_or_forgotten_by_age(redis_url: str, unique: str) -> None:
    keys = KeyLayout(f"t{unique}")
    with redis.Redis.from_url(redis_url) as client:
        client.hset(keys.workers_key, mapping={
            "fresh": _report("fresh", 4.0), "slow": _report("slow", 14.0, every_s=5.0),
            "silent": _report("silent", 16.0, every_s=5.0), "gone": _report("gone", FORGET_AFTER_S + 1),
            "garbage": b"not json"})
        reports = {r["worker"]: r for r in read_reports(client, keys, NOW)}
        assert set(reports) == {"fresh", "slow", "silent"}
        assert [reports[w]["stale"] for w in ("fresh", "slow", "silent")] == [False, False, True]
        assert reports["silent"]["age_s"] == 16.0
        assert reports["fresh"]["partitions"][0]["lag"] == 2
        assert set(client.hkeys(keys.workers_key)) == {b"fresh", b"slow", b"silent"}, "the gone and the garbage go"
