"""Event-log compaction: closed days' files merge per partition; readers see every row exactly once throughout."""

from __future__ import annotations

import itertools
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from feature_store.errors import OfflineStoreError
from feature_store.offline import compaction
from feature_store.offline.compaction import _compaction_lock, compact_log
from feature_store.offline.engine import sql_list
from feature_store.offline.events import source_rows_sql
from feature_store.offline.layout import log_dir, log_files, parse_log_file
from feature_store.offline.log_writer import WATERMARK_KEY, EventLogWriter
from featurestream.cli import app
from featurestream.commands.compact import closed_before
from streams.batch import log_schema
from tests.streams.support import events_repo

SOURCE = events_repo("compaction-unused").sources["events"]
SCHEMA = log_schema(SOURCE)  # type: ignore[arg-type]
EVOLVED = SCHEMA.insert(SCHEMA.get_field_index("ts") + 1, pa.field("note", pa.string()))  # a field added later
DAY_MS = 86_400_000
DAY0 = 1_767_225_600_000  # 2026-01-01T00:00Z


def _day(index: int) -> str:
    return datetime.fromtimestamp((DAY0 + index * DAY_MS) / 1000, tz=UTC).strftime("%Y-%m-%d")


def _rows(schema: pa.Schema, partition: int, first: int, n: int, ingest: int) -> pa.Table:
    columns: dict[str, Any] = {f.name: pa.nulls(n, f.type) for f in schema}
    offsets = range(first, first + n)
    columns["id"] = pa.array([f"p{partition}-e{o}" for o in offsets])
    columns["user"] = pa.array([f"u{o % 7}" for o in offsets])
    columns["amount"] = pa.array([o * 0.5 for o in offsets])
    columns["ts"] = columns["__event_time"] = pa.array([ingest - 1_000 + o for o in offsets], pa.int64())
    columns["__offset"] = pa.array(offsets, pa.int64())
    columns["__partition"] = pa.array([partition] * n, pa.int32())
    columns["__ingest_time"] = pa.array([ingest] * n, pa.int64())
    columns["__status"] = pa.array(["applied" if o % 5 else "late" for o in offsets])
    if "note" in columns:
        columns["note"] = pa.array([f"n{o}" for o in offsets])
    return pa.table([columns[f.name] for f in schema], schema=schema)


def _write(data_dir: Path, writes: list[tuple[int, int, int, bool]]) -> dict[int, int]:
    """Roll one file per (partition, day index, rows, evolved) write; the next offset of each partition."""
    writers = {False: EventLogWriter(data_dir, "events", SCHEMA), True: EventLogWriter(data_dir, "events", EVOLVED)}
    next_offset: dict[int, int] = {}
    day_of: dict[int, int] = {}
    for partition, day, n, evolved in writes:
        writer = writers[evolved]
        day = day_of[partition] = max(day, day_of.get(partition, 0))  # a partition's ingest days only move on
        first = next_offset.get(partition, 0)
        writer.open_partition(partition)
        writer.append(partition, _rows(EVOLVED if evolved else SCHEMA, partition, first, n, DAY0 + day * DAY_MS),
                      first + n - 1, DAY0 + day * DAY_MS + first)
        writer.flush(partition)
        next_offset[partition] = first + n
    return next_offset


def _read(data_dir: Path) -> list[tuple[Any, ...]]:
    """Every logged row (all columns, files unioned by name), in partition and offset order."""
    files = log_files(data_dir, "events")
    if not files:
        return []
    return duckdb.sql(f"SELECT * EXCLUDE (date) FROM read_parquet({sql_list(files)}, union_by_name = true) "
                      "ORDER BY __partition, __offset").fetchall()


def _training_rows(data_dir: Path) -> list[tuple[Any, ...]]:
    """What the batch path reads from the log (training sets, materialization)."""
    con = duckdb.connect()
    return con.execute(f"SELECT * FROM ({source_rows_sql(con, data_dir, SOURCE)}) ORDER BY __seq").fetchall()


def _positions(data_dir: Path, partitions: list[int]) -> dict[int, tuple[int, int] | None]:
    writer = EventLogWriter(data_dir, "events", SCHEMA)
    out: dict[int, tuple[int, int] | None] = {}
    for p in partitions:
        position = writer.durable(p)
        out[p] = None if position is None else (position.offset, position.watermark)
    return out


def _files_by_day(data_dir: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in sorted(log_dir(data_dir, "events").glob("date=*/*")):
        out.setdefault(path.parent.name.removeprefix("date="), []).append(path)
    return out


_WRITES = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(1, 40), st.booleans()),
                   min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(writes=_WRITES, max_rows=st.integers(1, 150), before=st.integers(0, 4))
def test_compaction_keeps_every_row_once_and_merges_what_it_may(
        writes: list[tuple[int, int, int, bool]], max_rows: int, before: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        next_offset = _write(data_dir, writes)
        rows, training, positions = _read(data_dir), _training_rows(data_dir), _positions(data_dir, [0, 1, 2])
        files_before = _files_by_day(data_dir)

        report = compact_log(data_dir, before_day=_day(before), max_rows=max_rows)

        assert _read(data_dir) == rows
        assert _training_rows(data_dir) == training
        assert _positions(data_dir, [0, 1, 2]) == positions
        files_after = _files_by_day(data_dir)
        assert {d: f for d, f in files_after.items() if d >= _day(before)} == \
            {d: f for d, f in files_before.items() if d >= _day(before)}  # open days untouched
        assert report.files_before - report.files_after == \
            sum(len(files_before[d]) - len(files_after[d]) for d in files_after)
        for day, paths in files_after.items():
            assert not [p for p in paths if p.name.startswith(".")]  # no temporary file left
            if day >= _day(before):
                continue
            by_partition: dict[int, list[Any]] = {}
            for path in paths:
                parsed = parse_log_file(path)
                assert parsed is not None
                by_partition.setdefault(parsed.partition, []).append(parsed)
            for files in by_partition.values():
                files.sort(key=lambda f: f.first)
                for a, b in itertools.pairwise(files):  # neighbours could not have been one file
                    assert a.last < b.first
                    schema_a, schema_b = pq.read_schema(a.path), pq.read_schema(b.path)
                    rows_ab = pq.read_metadata(a.path).num_rows + pq.read_metadata(b.path).num_rows
                    assert rows_ab > max_rows or not schema_a.remove_metadata().equals(schema_b.remove_metadata())

        again = compact_log(data_dir, before_day=_day(before), max_rows=max_rows)
        assert (again.files_before, again.files_after, again.rows) == (again.files_after, again.files_after, 0)

        # a worker resumes after a compacted day: from the same position, without duplicating a row
        writer = EventLogWriter(data_dir, "events", SCHEMA)
        for partition, first in next_offset.items():
            writer.open_partition(partition)
            writer.append(partition, _rows(SCHEMA, partition, first - 1, 3, DAY0 + 4 * DAY_MS), first + 1, 1)
            writer.flush(partition)
        files = log_files(data_dir, "events")
        offsets = duckdb.sql(f"SELECT __partition, __offset FROM read_parquet({sql_list(files)}, "
                             "union_by_name = true)").fetchall()
        assert sorted(offsets) == sorted(set(offsets))
        assert {p: max(o for q, o in offsets if q == p) for p in next_offset} == \
            {p: n + 1 for p, n in next_offset.items()}


def test_the_merged_file_keeps_the_newest_watermark(tmp_path: Path) -> None:
    _write(tmp_path, [(0, 0, 5, False), (0, 0, 5, False), (0, 0, 5, False)])
    compact_log(tmp_path, before_day=_day(1))
    (merged,) = log_files(tmp_path, "events")
    assert Path(merged).name == "p0-0-14.parquet"
    assert pq.read_schema(merged).metadata[WATERMARK_KEY] == str(DAY0 + 10).encode()


def test_a_compaction_stopped_before_its_deletes_hides_its_inputs_and_the_next_one_deletes_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, [(0, 0, 5, False), (0, 0, 5, False), (1, 0, 4, False), (1, 0, 4, False)])
    rows, training = _read(tmp_path), _training_rows(tmp_path)
    real_unlink = Path.unlink

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise OSError("killed between the rename and the deletes")

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(OSError, match="killed"):
        compact_log(tmp_path, before_day=_day(1))
    monkeypatch.setattr(Path, "unlink", real_unlink)
    on_disk = sorted(p.name for p in log_dir(tmp_path, "events").glob("date=*/*.parquet"))
    assert on_disk == ["p0-0-4.parquet", "p0-0-9.parquet", "p0-5-9.parquet",
                       "p1-0-3.parquet", "p1-4-7.parquet"]  # partition 0 swapped, its inputs still there
    assert _read(tmp_path) == rows
    assert _training_rows(tmp_path) == training
    assert EventLogWriter(tmp_path, "events", SCHEMA).open_partition(0) is not None

    report = compact_log(tmp_path, before_day=_day(1))
    assert sorted(Path(f).name for f in log_files(tmp_path, "events")) == ["p0-0-9.parquet", "p1-0-7.parquet"]
    assert sorted(p.name for p in log_dir(tmp_path, "events").glob("date=*/*.parquet")) == \
        ["p0-0-9.parquet", "p1-0-7.parquet"]
    assert (report.files_before, report.files_after) == (3, 2)
    assert _read(tmp_path) == rows


def test_half_written_files_in_closed_days_are_removed_and_open_days_are_left_alone(tmp_path: Path) -> None:
    _write(tmp_path, [(0, 0, 5, False), (0, 2, 5, False)])
    stale = log_dir(tmp_path, "events") / f"date={_day(0)}" / ".p0-5-9.parquet.tmp-4242"
    writing = log_dir(tmp_path, "events") / f"date={_day(2)}" / ".p0-10-12.parquet.tmp-4242"
    stale.write_bytes(b"half")
    writing.write_bytes(b"half")
    compact_log(tmp_path, before_day=_day(1))
    assert not stale.exists()
    assert writing.exists()


def test_one_compaction_per_source_at_a_time(tmp_path: Path) -> None:
    _write(tmp_path, [(0, 0, 5, False), (0, 0, 5, False)])
    with _compaction_lock(tmp_path, "events"), pytest.raises(OfflineStoreError, match="another compaction"):
        compact_log(tmp_path, before_day=_day(1))
    assert compact_log(tmp_path, before_day=_day(1)).files_after == 1


def test_compact_cli_reports_and_refuses_a_bad_day(tmp_path: Path) -> None:
    _write(tmp_path, [(0, 0, 5, False), (0, 0, 5, False), (1, 1, 3, False)])
    env = {"FEATURESTREAM_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["compact", "--before", _day(2)], env=env)
    assert result.exit_code == 0, result.output
    assert "compacted 2 files into 1 (10 rows merged" in result.output
    bad = CliRunner().invoke(app, ["compact", "--before", "yesterday"], env=env)
    assert bad.exit_code != 0
    assert isinstance(bad.exception, OfflineStoreError)
    assert "write YYYY-MM-DD" in str(bad.exception)


def test_a_day_closes_an_hour_after_midnight_utc() -> None:
    assert closed_before(datetime(2026, 3, 2, 0, 59, tzinfo=UTC)) == "2026-03-01"
    assert closed_before(datetime(2026, 3, 2, 1, 0, tzinfo=UTC)) == "2026-03-02"


def test_the_plan_lists_only_days_with_work(tmp_path: Path) -> None:
    _write(tmp_path, [(0, 0, 5, False), (1, 0, 5, False), (1, 0, 5, False)])
    plan = compaction.compaction_plan(tmp_path, before_day=_day(1))
    assert [(d.partition, len(d.files)) for d in plan] == [(1, 2)]
