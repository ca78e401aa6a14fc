"""`featurestream compact`: merge each closed day's event-log files per partition (rows unchanged)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from feature_store.errors import OfflineStoreError
from feature_store.settings import load_settings
from featurestream.commands._options import DataDirOption

__all__ = ["closed_before", "compact"]

CLOSE_MARGIN = timedelta(hours=1)
"""A day is closed this long after midnight UTC: a worker rolls its last buffer of the day within seconds."""


def closed_before(now: datetime) -> str:
    """The first day (YYYY-MM-DD, UTC) still open for workers at `now`: compaction takes the days before it."""
    return (now.astimezone(UTC) - CLOSE_MARGIN).strftime("%Y-%m-%d")


def compact(
    before: Annotated[str | None, typer.Option(
        help="Compact the days before this one (YYYY-MM-DD, UTC). Default: every day closed an hour ago.")] = None,
    source: Annotated[list[str] | None, typer.Option(help="Only this source's log; repeat for several.")] = None,
    max_rows: Annotated[int, typer.Option(min=1, help="Rows per merged file at most.")] = 5_000_000,
    data_dir: DataDirOption = None,
) -> None:
    """Merge each closed day's event-log files of a partition into one file (or a few of MAX_ROWS rows).

    The worker rolls a file per partition every few seconds; queries over the
    log (training sets, materialization, consistency) open every file.
    Readers never see a row twice or miss one, workers may keep running, and
    a compaction stopped half-way is finished by the next one. Run it daily
    (e.g. from cron), or any time.
    """
    from rich.console import Console

    from feature_store.offline.compaction import compact_log
    from featurestream.commands._batch_progress import fraction_bar

    settings = load_settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    day = before if before is not None else closed_before(datetime.now(UTC))
    try:
        day = datetime.strptime(day, "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError:
        raise OfflineStoreError(f"--before {day!r} is not a day; write YYYY-MM-DD, e.g. 2026-01-31") from None
    console = Console(stderr=True, highlight=False)
    with fraction_bar(console, f"compacting the event log before {day}") as progress:
        report = compact_log(settings.data_dir, before_day=day, sources=source, max_rows=max_rows,
                             on_progress=lambda done, total: progress(done / total))
    typer.echo(f"compacted {report.files_before:,} files into {report.files_after:,} "
               f"({report.rows:,} rows merged, {report.bytes_before / 1e6:,.1f} -> {report.bytes_after / 1e6:,.1f} "
               f"MB) in {report.days:,} partition-days before {day}")
