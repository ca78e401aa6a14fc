"""The online store: Redis key layout, value codec, and reads.

One module owns each concern: `keys` (layout, hash tags, partitioning),
`codec` (compact values), `reader` (pipelined feature-vector reads).
The stream worker and materialization write with the same `keys`/`codec`.
"""

from __future__ import annotations

from feature_store.online.codec import pack_latest, pack_stats, unpack_latest, unpack_stats
from feature_store.online.keys import KeyLayout, partition_for
from feature_store.online.reader import FeatureValue, OnlineReader

__all__ = [
    "FeatureValue",
    "KeyLayout",
    "OnlineReader",
    "pack_latest",
    "pack_stats",
    "partition_for",
    "unpack_latest",
    "unpack_stats",
]
