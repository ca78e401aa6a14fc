"""How fast this machine is right now: a fixed pure-Python loop, timed.

Why: on a shared VM the same code ran 40-50% slower from one minute to the
next (worker CPU per event 48 vs 71 us in back-to-back runs of bench/stream.py).
Benchmarks print this before and after their phases, so a slow run shows as
one. Not every one: a tight loop misses slowdowns that hit the stream path's
memory-heavy work (docs/production.md, "Fetch pacing"); bench/stream.py's
`host_cpu` per event of its producer, the same work in every run, shows them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["HostCpu", "process_cpu_s", "speed_probe"]


def speed_probe() -> dict[str, float]:
    """Milliseconds for `sum(range(3_000_000))` (best of 3; ~40 ms on a quiet core here) and the load."""
    best = min(_loop_s() for _ in range(3))
    return {"python_loop_ms": round(best * 1000, 1), "load_average_1m": round(os.getloadavg()[0], 2)}


class HostCpu:
    """CPU seconds of the whole host and of given processes between `__init__` and `shares`.

    Why: the stream bench runs the broker, Redis, a producer and the worker on
    one host; its latency tail depends on how busy the host's cores were and
    who kept them busy. Linux /proc only (elsewhere the figures are None).
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._host = _host_jiffies()
        self._procs = {name: _cpu_or_none(pid) for name, pid in pids.items()}

    def shares(self, events: int, extra_cpu_s: dict[str, float]) -> dict[str, object]:
        """Busy share of all cores, and CPU microseconds per event of each process (plus `extra_cpu_s`
        measured by the caller, e.g. its own process)."""
        host = _host_jiffies()
        busy = None
        if host is not None and self._host is not None:
            total, idle = host[0] - self._host[0], host[1] - self._host[1]
            busy = round(1 - idle / total, 3) if total else None
        cpu_s: dict[str, float | None] = dict(extra_cpu_s)
        for name, pid in self._pids.items():
            before, after = self._procs[name], _cpu_or_none(pid)
            cpu_s[name] = None if before is None or after is None else after - before
        return {"busy_share_of_all_cores": busy,
                "us_per_event": {name: None if s is None else round(s / max(1, events) * 1e6, 1)
                                 for name, s in cpu_s.items()}}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_or_none(pid: int) -> float | None:
    try:
        return process_cpu_s(pid)
    except OSError:  # gone, or no /proc
        return None


def _host_jiffies() -> tuple[int, int] | None:
    """(all, idle + iowait) jiffies of every core since boot."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return sum(fields[:8]), fields[3] + fields[4]  # user nice system idle iowait irq softirq steal


def _loop_s() -> float:
    start = time.perf_counter()
    sum(range(3_000_000))
    return time.perf_counter() - start
