"""The Redis key layout (version `v1`), in one place.

    <prefix>:v1:{<source>:<p>}:<view>.<state>:<entity>:<series>   state of one entity
    <prefix>:v1:{<source>:<p>}:offset                              last applied offset
    <prefix>:v1:workers                                            stream workers' status reports

`{<source>:<p>}` is a Redis Cluster hash tag: everything one source
partition writes lives in one slot, so the stream worker's script touches
only keys of one slot. `<state>` is the view's state fingerprint: a breaking
change of the view gets fresh keys. `<series>` is `latest` for latest-value
views or `h<hop>` (e.g. `h5m`) for the tiles of one hop, a HASH of
tile start (epoch ms) -> packed stats.

Stream events land in the partition Kafka gave them; batch rows in
`partition_for(entity, source.partitions)`. A view whose entity is the
source's message key keeps each entity in one partition; any other view
keeps a partial state per partition that readers merge.

Tile hashes also hold two marker fields the stream writer maintains
(`apply.lua`) so readers can cache closed tiles (`tile_cache`): `~t`, the
newest tile start ever written, and `~m`, a version that changes whenever a
tile older than `~t` is written or pruned. Field names starting with `~` are
never tiles. Materialization rewrites tiles with `set_tiles.lua`, which gives
the hash a fresh `~m` and keeps `~t` the newest tile present, in the same
atomic step. A hash without the markers is read whole and not cached.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.partitioner import murmur2

from feature_store.definitions import FeatureView, Source, StreamSource
from feature_store.durations import format_ms

__all__ = ["KEY_VERSION", "NEWEST_FIELD", "VERSION_FIELD", "KeyLayout", "entity_key_bytes",
           "hash_tag", "partition_for"]

KEY_VERSION = "v1"
VERSION_FIELD = "~m"
"""Tile hash field: changes whenever a tile older than `NEWEST_FIELD` is written or pruned."""
NEWEST_FIELD = "~t"
"""Tile hash field: the newest tile start (epoch ms) ever written to the hash."""


def entity_key_bytes(entity: str | int) -> bytes:
    """The message key bytes of an entity key, as producers send them."""
    return str(entity).encode()


def partition_for(entity: str | int, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) picks for this entity."""
    return partition_of_key(entity_key_bytes(entity), partitions)


def partition_of_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) picks for these message key bytes."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def hash_tag(source: str, partition: int) -> str:
    """The Redis Cluster hash tag of every key of one source partition: they all live on one node."""
    return f"{{{source}:{partition}}}"


@dataclass(frozen=True)
class KeyLayout:
    """Builds every Redis key; `prefix` isolates deployments (and tests)."""

    prefix: str = "fs"

    def tag(self, source: Source, partition: int) -> str:
        return hash_tag(source.name, partition)

    def offset_key(self, source: StreamSource, partition: int) -> str:
        return f"{self.prefix}:{KEY_VERSION}:{self.tag(source, partition)}:offset"

    def state_key(self, view: FeatureView, partition: int, entity: str | int, hop_ms: int | None) -> str:
        head, tail = self.state_key_parts(view, partition, hop_ms)
        return f"{head}{entity}{tail}"

    def state_key_parts(self, view: FeatureView, partition: int, hop_ms: int | None) -> tuple[str, str]:
        """(head, tail) such that `state_key(...) == head + str(entity) + tail` (readers build many keys)."""
        series = "latest" if hop_ms is None else f"h{format_ms(hop_ms)}"
        return (f"{self.prefix}:{KEY_VERSION}:{self.tag(view.source, partition)}:{view.name}.{view.state_fingerprint}:",
                f":{series}")

    @property
    def workers_key(self) -> str:
        """One hash of the stream workers' status reports, a field per worker (`feature_store.worker_reports`)."""
        return f"{self.prefix}:{KEY_VERSION}:workers"

    def partitions_to_read(self, view: FeatureView, entity: str | int) -> list[int]:
        """Partitions holding state of `entity` for `view`: one when co-partitioned, else all."""
        if view.co_partitioned:
            return [partition_for(entity, view.source.partitions)]
        return list(range(view.source.partitions))
