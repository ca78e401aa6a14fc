"""Where offline data lives and which columns the event log has. One place, both paths.

    <data_dir>/log/<source>/date=<YYYY-MM-DD>/p<partition>-<first>-<last>.parquet
    <data_dir>/sources/...            BatchSource files (a source's `path` is relative to data_dir)
    <data_dir>/training/ ...          training sets, predictions written by jobs

The event log holds every consumed event of a stream source: the schema's
columns (timestamps as epoch ms BIGINT) plus the bookkeeping columns below.
A file covers offsets `first..last` (inclusive) of one partition, is written
to a temporary name and renamed into place, so a reader never sees half a
file and the file names say which offsets are durably logged. `date` is the
UTC date of the batch's ingest time.

Compaction (`feature_store.offline.compaction`) replaces a day's files of one
partition with one file covering their offsets, then deletes them; a reader
listing files in between would see both, so readers list through `log_files`,
which leaves out a file whose offsets another file of its partition covers.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

__all__ = [
    "LOG_COLUMNS",
    "LogFile",
    "Status",
    "batch_source_glob",
    "day_folders",
    "log_dir",
    "log_file_path",
    "log_files",
    "parse_log_file",
    "parse_log_name",
]

Status = str  # "applied" | "late" | "invalid"

LOG_COLUMNS = pa.schema([
    ("__event_time", pa.int64()),   # event time, epoch ms (null for invalid events)
    ("__ingest_time", pa.int64()),  # when the worker applied the event's batch to Redis, epoch ms
    ("__partition", pa.int32()),
    ("__offset", pa.int64()),
    ("__status", pa.string()),      # applied | late | invalid
    ("__reason", pa.string()),      # why late/invalid, else null
])
"""Bookkeeping columns appended to the schema's columns in every log file."""

_FILE = re.compile(r"^p(\d+)-(\d+)-(\d+)\.parquet$")


def log_dir(data_dir: Path, source: str) -> Path:
    return data_dir / "log" / source


def log_files(data_dir: Path, source: str, *, since_day: str = "") -> list[str]:
    """The source's log files (sorted paths) in the day folders `date=<day>` >= `since_day`.

    A file whose offsets another file of its partition also covers is left
    out: it is the input of a compaction that stopped before deleting it, and
    its rows are in the covering file.
    """
    found: list[tuple[int, int, int, str]] = []  # partition, first, last, path
    for day, folder in day_folders(data_dir, source):
        if day >= since_day:
            for entry in os.scandir(folder):
                parsed = parse_log_name(entry.name)
                if parsed is not None:
                    found.append((*parsed, entry.path))
    return sorted(uncovered(found))


def day_folders(data_dir: Path, source: str) -> list[tuple[str, str]]:
    """(day, folder path) of each `date=<day>` folder of the source's log, by day."""
    root = log_dir(data_dir, source)
    days = [(e.name[5:], e.path) for e in os.scandir(root) if e.name.startswith("date=") and e.is_dir()] \
        if root.is_dir() else []
    return sorted(days)


def uncovered(files: list[tuple[int, int, int, str]]) -> list[str]:
    """Paths of the (partition, first, last, path) files no other file of their partition covers."""
    kept: list[str] = []
    reach: dict[int, int] = {}  # per partition, the highest last offset of the files kept so far
    for partition, _first, last, path in sorted(files, key=lambda f: (f[0], f[1], -f[2])):
        if last > reach.get(partition, -1):  # sorted by first, widest first: a covered file comes after its cover
            kept.append(path)
            reach[partition] = last
    return kept


def log_file_path(data_dir: Path, source: str, partition: int, first: int, last: int, ingest_ms: int) -> Path:
    day = datetime.fromtimestamp(ingest_ms / 1000, tz=UTC).strftime("%Y-%m-%d")
    return log_dir(data_dir, source) / f"date={day}" / f"p{partition}-{first}-{last}.parquet"


class LogFile:
    """Partition and offset range a log file name declares."""

    __slots__ = ("first", "last", "partition", "path")

    def __init__(self, path: Path, partition: int, first: int, last: int) -> None:
        self.path, self.partition, self.first, self.last = path, partition, first, last


def parse_log_file(path: Path) -> LogFile | None:
    parsed = parse_log_name(path.name)
    return None if parsed is None else LogFile(path, *parsed)


def parse_log_name(name: str) -> tuple[int, int, int] | None:
    """(partition, first, last) a log file name declares; None for any other name."""
    match = _FILE.match(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def batch_source_glob(data_dir: Path, path: str) -> str:
    """Absolute glob of a BatchSource `path` (relative paths are under data_dir)."""
    p = Path(path)
    return str(p if p.is_absolute() else data_dir / p)
