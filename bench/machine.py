"""How fast this machine is right now: a fixed pure-Python loop, timed.

Why: on a shared VM the same code ran 40-50% slower from one minute to the
next (worker CPU per event 48 vs 71 us in back-to-back runs of bench/stream.py).
Benchmarks print this before and after their phases, so a slow run shows as
one.
"""

from __future__ import annotations

import os
import time

__all__ = ["speed_probe"]


def speed_probe() -> dict[str, float]:
    """Milliseconds for `sum(range(3_000_000))` (best of 3; ~40 ms on a quiet core here) and the load."""
    best = min(_loop_s() for _ in range(3))
    return {"python_loop_ms": round(best * 1000, 1), "load_average_1m": round(os.getloadavg()[0], 2)}


def _loop_s() -> float:
    start = time.perf_counter()
    sum(range(3_000_000))
    return time.perf_counter() - start
