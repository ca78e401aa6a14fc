"""Compact values: msgpack arrays, which the Redis script reads with cmsgpack.

Tiles hold the stat vector of their `TileLayout`; latest-value keys hold
`[event_time, tie, seq, value1, value2, ...]` in the view's field order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs

__all__ = ["pack_latest", "pack_stats", "pack_stats_many", "unpack_latest", "unpack_stats"]


def pack_stats(stats: Sequence[Any]) -> bytes:
    """Pack a stat vector. None becomes False so Lua sees no holes (no stat is legitimately None)."""
    return msgpack.packb([False if v is None else v for v in stats])  # type: ignore[no-any-return]


def pack_stats_many(vectors: Iterable[Sequence[Any]]) -> list[bytes]:
    """`pack_stats` of many vectors, same bytes, ~3x faster in bulk (one Packer reused; materialization)."""
    pack = msgpack.Packer(autoreset=True).pack
    return [pack([False if v is None else v for v in stats] if None in stats else stats) for stats in vectors]


def unpack_stats(data: bytes) -> list[Any]:
    return msgpack.unpackb(data)  # type: ignore[no-any-return]


def pack_latest(event_time: int, tie: int, seq: int, values: Sequence[Any]) -> bytes:
    return msgpack.packb([event_time, tie, seq, *values])  # type: ignore[no-any-return]


def unpack_latest(data: bytes) -> tuple[tuple[int, int, int], list[Any]]:
    """Return ((event_time, tie, seq), values)."""
    items = msgpack.unpackb(data)
    return (items[0], items[1], items[2]), items[3:]
