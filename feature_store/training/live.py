"""Redis layout of the live training loop, shared by the stream worker (writer) and serving (reader).

Keys (prefix = the online store's, e.g. `fs`), all under `<prefix>:v1:lbl:` or `:learn:`/`:mon:`:
- `pred:<request_id>`    STRING, JSON prediction record (+ `shadow` scores), TTL = prediction retention
- `idx:<entity_key>`     ZSET request_id scored by served_at, for labels keyed by entity + time
- `seen:<model>:<rid>`   STRING "<topic>:<partition>:<offset>" of the label that joined, TTL = retention
- `pending`              ZSET label id -> deadline (epoch ms); `pending:data` HASH label id -> JSON
- `orphans`              LIST of JSON orphan records, newest first, capped
- `stats`                HASH "<model>:<outcome>" -> count (joined, duplicate, orphan, pending, replay)
- `perf:<model>`         HASH "<version>:<role>:<n|hits|loss|brier>" (role: live, shadow)
- `learn:<model>`        STRING, JSON status of the online learner (metrics, history, lineage)
- `mon:<service>`        STRING, JSON monitoring report written by the worker
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["LABELS_TOPIC", "LiveKeys", "perf_fields", "perf_summary", "read_live"]

LABELS_TOPIC = "_labels"  # where `POST /v1/labels` sends labels and the worker's label agent reads them


@dataclass(frozen=True)
class LiveKeys:
    prefix: str = "fs"

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, "v1", *parts))

    def prediction(self, request_id: str) -> str:
        return self._k("lbl", "pred", request_id)

    def entity_index(self, entity_key: str) -> str:
        return self._k("lbl", "idx", entity_key)

    def seen(self, model: str, request_id: str) -> str:
        return self._k("lbl", "seen", model, request_id)

    @property
    def pending(self) -> str:
        return self._k("lbl", "pending")

    @property
    def pending_data(self) -> str:
        return self._k("lbl", "pending", "data")

    @property
    def orphans(self) -> str:
        return self._k("lbl", "orphans")

    @property
    def stats(self) -> str:
        return self._k("lbl", "stats")

    def perf(self, model: str) -> str:
        return self._k("lbl", "perf", model)

    def learner(self, model: str) -> str:
        return self._k("learn", model)

    def monitor(self, service: str) -> str:
        return self._k("mon", service)


def perf_fields(version: int, role: str, prediction: float, label: float) -> dict[str, float]:
    """Increments of one scored label for `perf:<model>` (binary: hits at 0.5, clipped log loss, brier)."""
    p = min(max(float(prediction), 1e-15), 1 - 1e-15)
    y = 1.0 if label >= 0.5 else 0.0
    base = f"{version}:{role}:"
    return {base + "n": 1.0, base + "hits": float((prediction >= 0.5) == (y == 1.0)),
            base + "loss": -(y * math.log(p) + (1 - y) * math.log(1 - p)), base + "brier": (y - prediction) ** 2}


def perf_summary(raw: Mapping[bytes | str, bytes | str]) -> dict[str, dict[str, dict[str, float]]]:
    """`{version: {role: {labels, accuracy, log_loss, brier}}}` from a `perf:<model>` hash."""
    sums: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in raw.items():
        k = key.decode() if isinstance(key, bytes) else key
        version, role, name = k.split(":")
        sums.setdefault(version, {}).setdefault(role, {})[name] = float(value)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for version, roles in sums.items():
        for role, s in roles.items():
            n = s.get("n", 0.0)
            if n:
                out.setdefault(version, {})[role] = {"labels": n, "accuracy": s.get("hits", 0.0) / n,
                                                     "log_loss": s.get("loss", 0.0) / n,
                                                     "brier": s.get("brier", 0.0) / n}
    return out


async def read_live(redis: Any, keys: LiveKeys, model: str) -> dict[str, Any]:
    """What the worker knows about `model`: per-version live/shadow performance, learner status, label stats."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.perf(model))
        pipe.get(keys.learner(model))
        pipe.hgetall(keys.stats)
        perf, learner, stats = await pipe.execute()
    label_stats: dict[str, float] = {}
    for key, value in (stats or {}).items():
        k = key.decode() if isinstance(key, bytes) else key
        owner, _, outcome = k.rpartition(":")
        if owner == model:
            label_stats[outcome] = float(value)
    return {"model": model, "performance": perf_summary(perf or {}),
            "learner": orjson.loads(learner) if learner else None, "labels": label_stats}
