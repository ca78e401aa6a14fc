"""A running `featurestream worker` switches to newly applied definitions: nothing lost, nothing counted twice.

The worker starts on a registry holding one windowed view; half the stream
later, an apply adds a latest-value view. Without a restart, the worker must
then compute the new view from the events after the switch, and the old
view's state must equal an uninterrupted reference run's.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import redis.asyncio as aioredis

from feature_store.online import KeyLayout, partition_for, unpack_latest
from feature_store.publish import EventPublisher
from feature_store.registry import Registry
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from streams.materializer import Materializer
from tests.streams.snapshot import assert_same_state, redis_state
from tests.streams.support import config, consumed, events_repo, read_log, run_until, spawn_worker, worker_log
from tests.streams.test_crash import _applied, _publish
from tests.streams.test_end_to_end import generate


async def _until_applied(redis: aioredis.Redis, keys: KeyLayout, repo: FeatureRepo, want: list[int],
                         proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while await _applied(redis, keys, repo.sources["events"], len(want)) != want:
        assert proc.poll() is None, "the worker exited on its own"
        assert time.monotonic() < deadline, "the worker did not apply the stream in time"
        await asyncio.sleep(0.1)


async def test_worker_follows_an_apply_without_loss_or_double_count(settings: Settings, unique: str,
                                                                     redis_client: aioredis.Redis,
                                                                     tmp_path: Path) -> None:
    full = events_repo(f"reload-{unique}", partitions=2)
    before = FeatureRepo.from_definitions([full.views["spend"]])
    after = FeatureRepo.from_definitions([full.views["spend"], full.views["last"]])
    registry = tmp_path / "registry.db"
    Registry(registry).apply(before, applied_by="test")
    stream = generate(600, seed=8, users=12, shops=4)
    first, second = stream[:300], stream[300:]

    def offsets(events: list[dict[str, object]]) -> list[int]:
        counts = Counter(partition_for(str(e["user"]), 2) for e in events)
        return [counts[p] - 1 for p in range(2)]

    data_dir = tmp_path / "worker"
    data_dir.mkdir()
    prefix, keys = f"w{unique}", KeyLayout(f"w{unique}")
    async with EventPublisher(settings, full):  # topics exist before anyone subscribes
        pass
    group = f"reload-{unique}"
    proc = spawn_worker(settings, data_dir, prefix, group, "--definitions-poll-seconds", "0.2", "--log-roll-seconds",
                        "0.3", registry=registry, log_level="INFO")
    try:
        await _publish(settings, full, first, rate=3000)
        await _until_applied(redis_client, keys, full, offsets(first), proc)
        Registry(registry).apply(after, applied_by="test")
        deadline = time.monotonic() + 30
        while b"definitions reloaded" not in worker_log(data_dir, group).read_bytes():
            assert proc.poll() is None, "the worker exited on its own"
            assert time.monotonic() < deadline, "the worker did not switch to the applied definitions"
            await asyncio.sleep(0.1)
        await _publish(settings, full, second, rate=3000)
        await _until_applied(redis_client, keys, full, offsets(stream), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, worker_log(data_dir, group).read_text()[-3000:]

    # the view that ran throughout: the same state as an uninterrupted worker's
    reference = Materializer(config(settings, f"{unique}ref", prefix=f"r{unique}", data_dir=tmp_path / "reference",
                                    group_id=f"ref-{unique}"), before)
    await run_until(reference, lambda: consumed(reference, "events") >= len(stream))
    switched = await redis_state(redis_client, prefix, before)
    assert_same_state({k: v for k, v in switched.items() if ":last." not in k},
                      await redis_state(redis_client, f"r{unique}", before))

    # the added view: per user, the newest applied event after the switch, and nothing for users without one
    log = read_log(data_dir, "events")
    cut = offsets(first)
    newest: dict[str, dict[str, object]] = {}
    for row in log.filter(pc.equal(log["__status"], "applied")).to_pylist():
        if row["__offset"] > cut[row["__partition"]]:
            seen = newest.get(row["user"])
            if seen is None or (row["__event_time"], row["__offset"]) > (seen["__event_time"], seen["__offset"]):
                newest[row["user"]] = row
    assert newest, "no applied event after the switch"
    view = full.views["last"]
    for user in sorted({str(e["user"]) for e in stream}):
        stored = await redis_client.get(keys.state_key(view, partition_for(user, 2), user, None))
        if user not in newest:
            assert stored is None, f"{user}: a value from before the switch"
            continue
        assert stored is not None, f"{user}: no value after the switch"
        (event_time, _, _), values = unpack_latest(stored)
        row = newest[user]
        assert event_time == row["__event_time"]
        assert values == [row["amount"], row["label"], row["shop"]]
