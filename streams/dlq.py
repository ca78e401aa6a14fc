"""Dead letters: how the worker writes them and how operators read, fix and replay them.

A dead letter is the original record value (bytes as consumed) on
`<topic>.dlq`, keyed like the original, with headers naming the reason and
where it came from. The worker sends it before it applies the batch to
Redis, so a crash can only repeat a dead letter (never lose one): readers
dedupe by (source partition, source offset).

Fix files are JSONL, one object per event to re-publish:
`{"partition": 0, "offset": 12, "event": {...fixed event...}}` - the format
`export_dead_letters` writes (plus `reason` and, for undecodable values, `raw`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from feature_store.definitions import StreamSource
from feature_store.errors import BrokerUnavailable, ConfigError
from feature_store.publish import EventPublisher, PublishError

__all__ = [
    "DeadLetter",
    "ReplayResult",
    "dead_letter_headers",
    "export_dead_letters",
    "parse_dead_letter",
    "read_dead_letters",
    "read_fix_file",
    "replay_dead_letters",
]

H_REASON, H_TOPIC, H_PARTITION, H_OFFSET = "fs.reason", "fs.source_topic", "fs.source_partition", "fs.source_offset"


def dead_letter_headers(reason: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [(H_REASON, reason.encode()), (H_TOPIC, topic.encode()), (H_PARTITION, str(partition).encode()),
            (H_OFFSET, str(offset).encode())]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes | None
    key: bytes | None
    reason: str
    partition: int  # in the source topic
    offset: int  # in the source topic

    def event(self) -> dict[str, Any] | None:
        """The original event when its bytes are JSON, else None."""
        try:
            value = orjson.loads(self.value) if self.value is not None else None
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None


def parse_dead_letter(record: Any) -> DeadLetter:
    headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
    return DeadLetter(value=record.value, key=record.key, reason=headers.get(H_REASON, ""),
                      partition=int(headers.get(H_PARTITION, -1)), offset=int(headers.get(H_OFFSET, -1)))


async def read_dead_letters(bootstrap: str, source: StreamSource, *, group_id: str | None = None,
                            from_start: bool = True, progress: Callable[[int], None] | None = None,
                            commit: bool = False, timeout_s: float = 30.0) -> list[DeadLetter]:
    """Every dead letter of `source` up to the current end, deduplicated by source (partition, offset).

    With `group_id` and `from_start=False` reading starts at the group's committed offsets, and
    `commit=True` commits the end afterwards (so the next replay sees only new dead letters).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    try:
        await consumer.start()
    except Exception as exc:
        await consumer.stop()
        raise BrokerUnavailable(f"Kafka at {bootstrap} is unreachable ({type(exc).__name__})") from None
    try:
        partitions = consumer.partitions_for_topic(source.dlq_topic)
        if not partitions:
            await consumer.topics()  # refresh metadata once
            partitions = consumer.partitions_for_topic(source.dlq_topic) or set()
        tps = [TopicPartition(source.dlq_topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        ends: dict[TopicPartition, int] = {}
        for tp in tps:
            committed = await consumer.committed(tp) if group_id and not from_start else None
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        # the fetch highwater is the reliable end on every broker we support: poll until each reaches it
        seen: dict[tuple[int, int], DeadLetter] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        idle = 0
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=300, max_records=5_000)
            for tp, records in batches.items():
                for record in records:
                    letter = parse_dead_letter(record)
                    seen.setdefault((letter.partition, letter.offset), letter)
                ends[tp] = records[-1].offset + 1
            if progress is not None:
                progress(len(seen))
            done = True
            for tp in tps:
                highwater = consumer.highwater(tp)
                position = await consumer.position(tp)
                if highwater is None or position < highwater:
                    done = False
            idle = idle + 1 if not batches else 0
            if done and (idle >= 1 or not batches):
                break
        if commit and group_id:
            await consumer.commit({tp: await consumer.position(tp) for tp in tps})
        return sorted(seen.values(), key=lambda d: (d.partition, d.offset))
    finally:
        await consumer.stop()


def read_fix_file(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """(partition, offset) -> fixed event, from a JSONL fix file."""
    fixes: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read fix file {str(path)!r}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
            fixes[(int(item["partition"]), int(item["offset"]))] = dict(item["event"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ConfigError(
                f"fix file {str(path)!r} line {number}: expected JSON like "
                '{"partition": 0, "offset": 12, "event": {...}}') from None
    return fixes


def export_dead_letters(letters: Iterable[DeadLetter], path: Path) -> int:
    """Write dead letters as a fix-file template (edit `event`, then replay with --fix-file)."""
    count = 0
    with path.open("wb") as f:
        for letter in letters:
            item: dict[str, Any] = {"partition": letter.partition, "offset": letter.offset, "reason": letter.reason}
            event = letter.event()
            if event is None:
                item["raw"] = (letter.value or b"").decode(errors="replace")
                item["event"] = {}
            else:
                item["event"] = event
            f.write(orjson.dumps(item) + b"\n")
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class ReplayResult:
    read: int
    published: int
    errors: list[tuple[DeadLetter, str]]
    missing_fixes: list[tuple[int, int]]  # fix-file entries with no such dead letter


async def replay_dead_letters(publisher: EventPublisher, source: StreamSource, letters: list[DeadLetter],
                              fixes: Mapping[tuple[int, int], dict[str, Any]] | None = None) -> ReplayResult:
    """Re-publish dead letters: with `fixes` only the fixed ones (as fixed), else each original event."""
    chosen: list[tuple[DeadLetter, dict[str, Any] | None]] = []
    by_position = {(d.partition, d.offset): d for d in letters}
    missing: list[tuple[int, int]] = []
    if fixes is not None:
        for position, event in fixes.items():
            letter = by_position.get(position)
            if letter is None:
                missing.append(position)
            else:
                chosen.append((letter, event))
    else:
        chosen = [(d, d.event()) for d in letters]
    errors: list[tuple[DeadLetter, str]] = [(d, "not a JSON object; export it and give a fixed event")
                                            for d, e in chosen if e is None]
    sendable = [(d, e) for d, e in chosen if e is not None]
    result = await publisher.publish_many(source, [e for _, e in sendable if e is not None])
    failed: list[PublishError] = result.errors
    errors += [(sendable[err.index][0], err.reason) for err in failed]
    return ReplayResult(read=len(letters), published=result.published, errors=errors, missing_fixes=missing)
