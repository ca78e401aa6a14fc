"""Compare two runs' Redis state and event logs, ignoring only what wall clocks decide (ingest ties)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from feature_store.aggregates import tile_layouts
from feature_store.durations import format_ms
from feature_store.online.codec import unpack_latest, unpack_stats
from feature_store.repo import FeatureRepo
from tests import oracle
from tests.streams.support import read_log


async def redis_state(redis: aioredis.Redis, prefix: str, repo: FeatureRepo) -> dict[str, Any]:
    """Every key under `prefix`, decoded; `lk` (tie = ingest time), latest ties and tile hash markers dropped."""
    tie_free: dict[tuple[str, str], list[int]] = {}
    for view in repo.views.values():
        for layout in tile_layouts(view):
            drop = {i for i, s in enumerate(layout.stats) if s.stat == "lk"}
            tie_free[(view.name, f"h{format_ms(layout.hop_ms)}")] = [i for i in range(len(layout.stats))
                                                                      if i not in drop]
    state: dict[str, Any] = {}
    tags = tuple(f"{{{name}:" for name in repo.sources)
    async for raw in redis.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        rest = key[len(prefix) + 1:]
        if not any(tag in key for tag in tags):  # not this repo's state: e.g. the shared _predictions/_labels flows
            continue
        if key.endswith(":offset"):
            state[rest] = {k.decode(): int(float(v)) for k, v in (await redis.hgetall(key)).items()}
        elif key.endswith(":latest"):
            (et, _tie, seq), values = unpack_latest(await redis.get(key))
            state[rest] = [et, seq, *values]
        else:
            view = rest.split(":")[3].split(".")[0]  # v1:{source:p}:<view>.<fp>:<entity>:h<hop>
            keep = tie_free[(view, rest.rsplit(":", 1)[1])]
            tiles = await redis.hgetall(key)
            state[rest] = {int(f): [unpack_stats(v)[i] for i in keep] for f, v in tiles.items()
                           if not f.startswith(b"~")}  # the readers' cache markers (~m is a clock)
    return state


def assert_same_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want), f"keys differ: {sorted(set(got) ^ set(want))[:5]}"
    for key, value in want.items():
        _assert_close(got[key], value, key)


def _assert_close(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert sorted(got) == sorted(want), f"{where}: fields {sorted(got)} != {sorted(want)}"
        for k in want:
            _assert_close(got[k], want[k], f"{where}[{k}]")
    elif isinstance(want, list):
        assert isinstance(got, list), where
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{i}]")
    else:
        assert oracle.close(got, want), f"{where}: {got!r} != {want!r}"


def log_rows(data_dir: Path, source: str) -> Counter[tuple[int, int, str]]:
    """(partition, offset, status) of every logged row, with multiplicity (duplicates show as > 1)."""
    log = read_log(data_dir, source)
    if log.num_rows == 0:
        return Counter()
    return Counter(zip(log["__partition"].to_pylist(), log["__offset"].to_pylist(), log["__status"].to_pylist(),
                       strict=True))
