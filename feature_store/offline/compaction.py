"""Compact the event log: a closed day's files of one partition become one file (or a few); rows unchanged.

Why: the stream worker rolls a file per partition every few seconds
(`log_max_age_s`), about 17k files per partition and day, and every
training-set, materialization or consistency query opens them all.

How, without a reader ever seeing a row twice or missing one: the merged
file is written under a hidden temporary name, renamed into place, and only
then are its inputs deleted. `layout.log_files` leaves out a file that
another file of its partition covers, so readers see the inputs or the merged
file, never both. A compaction that stops between the rename and the deletes
leaves covered files behind; the next one deletes them.

Only day folders before `before_day` are touched: workers write into the day
of their batches' ingest time, so a day is closed once the clock has passed it
(plus a margin for a buffer rolled late). The rename and the deletes hold the
partition's log lock, as a worker's roll does; one compaction runs per source
at a time. A run of merged files shares one schema (a source's schema may
evolve; readers union files by name).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.errors import OfflineStoreError
from feature_store.offline.layout import LogFile, day_folders, log_dir, parse_log_name, uncovered
from feature_store.offline.log_writer import FileLock, partition_lock

__all__ = ["CompactionReport", "compact_log", "compaction_plan"]

_ROW_GROUP_ROWS = 128 * 1024
"""Rows per row group of a merged file (the inputs are often a few hundred rows each)."""

_TEMP_MARK = ".tmp-"
"""What the name of a file being written carries (the writer's and ours): never read, deleted in closed days."""


@dataclass(frozen=True, slots=True)
class _Day:
    """One partition's files in one closed day folder of one source."""

    source: str
    folder: Path
    partition: int
    files: list[LogFile]  # uncovered, in offset order
    covered: list[Path]  # left behind by a compaction that stopped before its deletes
    temp: list[Path]  # half-written by a writer or compaction that crashed (no one writes into a closed day)


@dataclass(frozen=True, slots=True)
class CompactionReport:
    files_before: int
    files_after: int
    rows: int  # rows in the files merged
    bytes_before: int
    bytes_after: int
    days: int  # partition-days looked at


def compaction_plan(data_dir: Path, *, before_day: str, sources: list[str] | None = None) -> list[_Day]:
    """Every (source, closed day, partition) with files to merge or to clean up."""
    root = data_dir / "log"
    if sources is None:
        sources = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    out = []
    for source in sorted(sources):
        for day, name in day_folders(data_dir, source):
            if day >= before_day:
                break
            folder = Path(name)
            by_partition: dict[int, list[tuple[int, int, int, str]]] = {}
            temp: dict[int, list[Path]] = {}
            for entry in os.scandir(folder):
                parsed = parse_log_name(entry.name)
                if parsed is not None:
                    by_partition.setdefault(parsed[0], []).append((*parsed, entry.path))
                elif entry.name.startswith(".") and _TEMP_MARK in entry.name:
                    parsed = parse_log_name(entry.name[1:entry.name.index(_TEMP_MARK)])
                    if parsed is not None:
                        temp.setdefault(parsed[0], []).append(Path(entry.path))
            for partition in sorted(by_partition.keys() | temp.keys()):
                found = by_partition.get(partition, [])
                kept = set(uncovered(found))
                files = [LogFile(Path(path), p, f, la) for p, f, la, path in sorted(found) if path in kept]
                covered = [Path(path) for *_, path in found if path not in kept]
                if len(files) > 1 or covered or partition in temp:
                    out.append(_Day(source, folder, partition, files, covered, temp.get(partition, [])))
    return out


def compact_log(data_dir: Path, *, before_day: str, sources: list[str] | None = None, max_rows: int = 5_000_000,
                on_progress: Callable[[int, int], None] | None = None) -> CompactionReport:
    """Merge each closed day's log files per partition into files of at most `max_rows` rows.

    `on_progress(done, total)` hears how many of the files to look at are
    done. Raises OfflineStoreError when another compaction of a source is
    running.
    """
    plan = compaction_plan(data_dir, before_day=before_day, sources=sources)
    total, done = sum(len(day.files) for day in plan), 0
    before = after = rows = bytes_before = bytes_after = 0
    for source in sorted({day.source for day in plan}):
        with _compaction_lock(data_dir, source):
            for day in (d for d in plan if d.source == source):
                with partition_lock(data_dir, source, day.partition):
                    for path in [*day.covered, *day.temp]:
                        path.unlink(missing_ok=True)
                for run in _runs(day.files, max_rows):
                    size = sum(f.path.stat().st_size for f in run)
                    before += len(run)
                    bytes_before += size
                    if len(run) == 1:
                        after += 1
                        bytes_after += size
                    else:
                        merged, n = _merge(data_dir, source, day.partition, run)
                        after += 1
                        rows += n
                        bytes_after += merged.stat().st_size
                    done += len(run)
                    if on_progress is not None:
                        on_progress(done, total)
    return CompactionReport(before, after, rows, bytes_before, bytes_after, len(plan))


def _runs(files: list[LogFile], max_rows: int) -> Iterator[list[LogFile]]:
    """Consecutive files sharing a schema, at most `max_rows` rows together (a larger file is a run alone)."""
    run: list[LogFile] = []
    schema: pa.Schema | None = None
    rows = 0
    for f in files:
        meta = pq.read_metadata(f.path)
        this = meta.schema.to_arrow_schema().remove_metadata()
        if run and (not this.equals(schema) or rows + meta.num_rows > max_rows):
            yield run
            run, rows = [], 0
        run.append(f)
        schema = this
        rows += meta.num_rows
    if run:
        yield run


def _merge(data_dir: Path, source: str, partition: int, run: list[LogFile]) -> tuple[Path, int]:
    """Write `run` as one file, swap it in for its inputs; (its path, its rows)."""
    dest = run[0].path.with_name(f"p{partition}-{run[0].first}-{run[-1].last}.parquet")
    tmp = dest.with_name(f".{dest.name}{_TEMP_MARK}{os.getpid()}")
    # the newest input's metadata: the partition watermark after the last row, which resuming reads
    schema = pq.read_schema(run[-1].path)
    rows = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        pending: list[pa.Table] = []
        held = 0
        for f in run:
            table = pq.read_table(f.path).replace_schema_metadata(schema.metadata)
            pending.append(table)
            held += table.num_rows
            if held >= _ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending), row_group_size=_ROW_GROUP_ROWS)
                rows += held
                pending, held = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=_ROW_GROUP_ROWS)
            rows += held
    _fsync(tmp)
    with partition_lock(data_dir, source, partition):
        os.replace(tmp, dest)
        _fsync(dest.parent)
        for f in run:
            if f.path != dest:
                f.path.unlink()
        _fsync(dest.parent)
    return dest, rows


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _compaction_lock(data_dir: Path, source: str) -> Iterator[None]:
    """One compaction per source at a time; a second one fails at once, saying so."""
    lock = FileLock(log_dir(data_dir, source) / ".locks" / "compaction.lock", wait=False)
    try:
        lock.__enter__()
    except BlockingIOError:
        raise OfflineStoreError(f"another compaction of the {source} event log is running; wait for it to "
                                "finish") from None
    try:
        yield
    finally:
        lock.__exit__()
