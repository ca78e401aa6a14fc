"""The event-log writer: atomic files named by offset range, durable positions, no duplicate rows."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.offline.layout import log_dir, parse_log_file
from feature_store.offline.log_writer import EventLogWriter
from streams.batch import log_schema
from tests.streams.support import events_repo

SOURCE = events_repo("log-unused").sources["events"]
SCHEMA = log_schema(SOURCE)  # type: ignore[arg-type]
INGEST = 1_767_225_600_000


def _rows(partition: int, first: int, last: int, ingest: int = INGEST) -> pa.Table:
    n = last - first + 1
    columns = {f.name: pa.nulls(n, f.type) for f in SCHEMA}
    columns["id"] = pa.array([f"e{o}" for o in range(first, last + 1)])
    columns["__offset"] = pa.array(range(first, last + 1), pa.int64())
    columns["__partition"] = pa.array([partition] * n, pa.int32())
    columns["__ingest_time"] = pa.array([ingest] * n, pa.int64())
    columns["__status"] = pa.array(["invalid"] * n)
    return pa.table([columns[f.name] for f in SCHEMA], schema=SCHEMA)


def _logged(data_dir: Path) -> list[int]:
    files = sorted(log_dir(data_dir, "events").glob("date=*/*.parquet"))
    return sorted(o for f in files for o in pq.read_table(f)["__offset"].to_pylist())


def test_files_are_named_by_offsets_and_say_how_far_the_log_is_durable(tmp_path: Path) -> None:
    writer = EventLogWriter(tmp_path, "events", SCHEMA)
    assert writer.open_partition(1) is None
    writer.append(1, _rows(1, 0, 9), 9, 500)
    writer.append(1, _rows(1, 10, 14), 14, 700)
    assert writer.durable(1) is None  # buffered only
    assert writer.position(1) is not None
    path = writer.flush(1)
    assert path is not None
    parsed = parse_log_file(path)
    assert parsed is not None
    assert (parsed.partition, parsed.first, parsed.last) == (1, 0, 14)
    assert path.parent.name == "date=2026-01-01"
    durable = EventLogWriter(tmp_path, "events", SCHEMA).durable(1)
    assert durable is not None
    assert (durable.offset, durable.watermark) == (14, 700)
    assert not list(tmp_path.rglob(".*tmp*"))
    assert _logged(tmp_path) == list(range(15))


def test_a_zombie_writer_cannot_duplicate_rows(tmp_path: Path) -> None:
    owner, zombie = EventLogWriter(tmp_path, "events", SCHEMA), EventLogWriter(tmp_path, "events", SCHEMA)
    for writer in (owner, zombie):
        writer.open_partition(0)
    owner.append(0, _rows(0, 0, 19), 19, 1)
    zombie.append(0, _rows(0, 0, 9), 9, 1)
    owner.flush(0)
    assert zombie.flush(0) is None  # everything it holds is already logged
    zombie.append(0, _rows(0, 10, 29), 29, 2)
    zombie.flush(0)  # only 20..29 are new
    owner.append(0, _rows(0, 20, 34), 34, 3)
    owner.flush(0)  # only 30..34 are new
    assert _logged(tmp_path) == list(range(35))


def test_positions_and_zombies_span_day_folders(tmp_path: Path) -> None:
    """Files are filed by ingest day; a reopened partition resumes after the newest day's file, and a roll
    (which looks only from the newest known day on) still drops what a zombie logged on a later day."""
    day = 86_400_000
    first = EventLogWriter(tmp_path, "events", SCHEMA)
    first.open_partition(0)
    first.append(0, _rows(0, 0, 9, INGEST), 9, 1)
    first.flush(0)
    first.append(0, _rows(0, 10, 19, INGEST + day), 19, 2)
    first.flush(0)
    owner, zombie = EventLogWriter(tmp_path, "events", SCHEMA), EventLogWriter(tmp_path, "events", SCHEMA)
    position = owner.open_partition(0)
    assert position is not None
    assert (position.offset, position.watermark) == (19, 2)
    zombie.open_partition(0)
    zombie.append(0, _rows(0, 20, 29, INGEST + 2 * day), 29, 3)
    zombie.flush(0)
    owner.append(0, _rows(0, 20, 39, INGEST + 2 * day), 39, 4)
    owner.flush(0)  # only 30..39 are new
    assert _logged(tmp_path) == list(range(40))
    assert sorted(p.name for p in log_dir(tmp_path, "events").glob("date=*")) == [
        "date=2026-01-01", "date=2026-01-02", "date=2026-01-03"]


def test_buffers_roll_by_rows_and_by_age(tmp_path: Path) -> None:
    writer = EventLogWriter(tmp_path, "events", SCHEMA, max_rows=10, max_age_s=0.2)
    writer.open_partition(0)
    writer.open_partition(1)
    writer.append(0, _rows(0, 0, 11), 11, 1)
    writer.append(1, _rows(1, 0, 2), 2, 1)
    assert writer.due() == [0]
    time.sleep(0.25)
    assert sorted(writer.due()) == [0, 1]
    writer.flush_all()
    assert writer.buffered() == 0
    assert writer.due() == []
