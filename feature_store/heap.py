"""Garbage-collector settings for the long-running processes: the API server and the stream worker.

Why: both build what they keep at start (modules, clients, routes, plans,
models), then allocate per request or batch objects that die by refcount
once answered or applied. With Python's defaults, a young collection runs
once 700 more objects are alive than at the last one, so a 100-entity read
or a 400-event batch started several, each walking that request's objects
and promoting them to be walked again; every 10th older collection was a
full one, walking every object kept (pauses of 8 ms in the server, 30-80 ms
in the worker: tail latencies of their own). Measured (collections during
bench runs, counted by `gc.callbacks`): the server's young collections went
from ~4 per 100-entity request to none, the worker's GC time at 10k
events/s roughly halved.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["FULL_COLLECTION_EVERY", "YOUNG_COLLECTION_AFTER", "long_lived_heap"]

YOUNG_COLLECTION_AFTER = 20_000
"""Net new container objects that start a young collection (Python's default: 700)."""

FULL_COLLECTION_EVERY = 100
"""Older collections per full one (Python's default: 10)."""

_holders = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def long_lived_heap() -> Iterator[None]:
    """Collect now, freeze what exists (out of every later collection) and collect rarely, until the last
    holder exits (a test process may run several apps or workers at once): then restore and unfreeze."""
    global _holders, _saved
    if _holders == 0:
        gc.collect()
        gc.freeze()
        _saved = gc.get_threshold()
        gc.set_threshold(max(_saved[0], YOUNG_COLLECTION_AFTER), _saved[1], max(_saved[2], FULL_COLLECTION_EVERY))
    _holders += 1
    try:
        yield
    finally:
        _holders -= 1
        if _holders == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            gc.unfreeze()
            _saved = None
