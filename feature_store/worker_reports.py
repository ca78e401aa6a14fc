"""Stream workers' status reports in Redis: which worker holds which partitions, how far behind, how fast.

Why: lag per partition lives in each worker's Prometheus registry, and an
operator looking at the dashboard (with or without Prometheus) should still
see which workers run, what each holds, its lag and rate. Each worker writes
its report into one field of one hash (`KeyLayout.workers_key`) every few
seconds and removes it when it stops; a reader calls a report stale when it
is older than three of the worker's report intervals (the worker died or
hangs) and drops it after `FORGET_AFTER_S`.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import orjson

from feature_store.online.keys import KeyLayout

__all__ = ["FORGET_AFTER_S", "read_reports", "withdraw_report", "worker_name", "write_report"]

FORGET_AFTER_S = 600.0
"""A report this old is deleted by the next reader: its worker is gone."""


def worker_name() -> str:
    """host:pid:random, unique even for several workers in one process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def write_report(client: Any, keys: KeyLayout, report: dict[str, Any]) -> None:
    """Store a worker's report (async client); it must hold `worker`, `updated_at` (epoch ms) and `every_s`."""
    await client.hset(keys.workers_key, report["worker"], orjson.dumps(report))


async def withdraw_report(client: Any, keys: KeyLayout, worker: str) -> None:
    """Remove a stopping worker's report: it is not shown as stale."""
    await client.hdel(keys.workers_key, worker)


def read_reports(client: Any, keys: KeyLayout, now_ms: int) -> list[dict[str, Any]]:
    """Every worker's last report (sync client), oldest first, each with `age_s` and `stale`; forgets the
    reports of workers gone for `FORGET_AFTER_S`."""
    out, gone = [], []
    for field, raw in client.hgetall(keys.workers_key).items():
        try:
            report = orjson.loads(raw)
            age_s = (now_ms - int(report["updated_at"])) / 1000
            every_s = float(report["every_s"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            gone.append(field)  # not a report this version writes
            continue
        if age_s > FORGET_AFTER_S:
            gone.append(field)
            continue
        out.append({**report, "age_s": round(age_s, 1), "stale": age_s > 3 * every_s})
    if gone:
        client.hdel(keys.workers_key, *gone)
    return sorted(out, key=lambda r: (r.get("started_at", 0), r.get("worker", "")))
