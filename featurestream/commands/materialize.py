"""`featurestream materialize`: backfill the online store (Redis) from the offline store."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from feature_store.settings import load_settings
from featurestream.commands._options import DataDirOption, RegistryOption, RepoOption

__all__ = ["materialize", "parse_time"]


def parse_time(value: str, what: str) -> int:
    """Epoch ms of an ISO-8601 time (no timezone means UTC), epoch ms digits, or 'now'."""
    import time
    from datetime import UTC, datetime

    from feature_store.errors import OfflineStoreError

    text = value.strip()
    if text == "now":
        return int(time.time() * 1000)
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise OfflineStoreError(f"--{what} {value!r} is not a time; write ISO-8601 like 2026-01-31T12:00:00Z, "
                                f"epoch milliseconds, or 'now'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def materialize(
    start: Annotated[str, typer.Option(help="Start of the range: ISO-8601 (UTC if no zone), epoch ms or 'now'.")],
    end: Annotated[str, typer.Option(help="End of the range (the state written is the one at END).")] = "now",
    view: Annotated[list[str] | None, typer.Option(help="Only this view; repeat for several (default: all).")] = None,
    ignore_ingest_time: Annotated[
        bool, typer.Option("--ignore-ingest-time", help="Count events by event time only, not as served.")
    ] = False,
    repo: RepoOption = None,
    redis: Annotated[str | None, typer.Option(envvar="FEATURESTREAM_REDIS", help="Redis URL to write to.")] = None,
    data_dir: DataDirOption = None,
    registry: RegistryOption = None,
) -> None:
    """Compute the online state at END from the event log and batch sources and write it to Redis.

    Windowed views get every tile overlapping [START - window, END]; latest
    views the newest row up to END. Writes overwrite, so a re-run changes
    nothing. Stream workers' offsets are not touched.
    """
    from rich.console import Console

    from feature_store.registry import load_live_repo
    from feature_store.store import FeatureStore
    from featurestream.commands._batch_progress import count_bar

    start_ms, end_ms = parse_time(start, "start"), parse_time(end, "end")
    overrides: dict[str, Any] = {"redis": redis, "data_dir": data_dir, "registry": registry}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    store = FeatureStore(settings, load_live_repo(settings, repo))
    console = Console(stderr=True, highlight=False)

    async def run() -> Any:
        try:
            with count_bar(console, "materializing") as advance:
                return await store.materialize(start_ms, end_ms, views=view or None,
                                               ignore_ingest_time=ignore_ingest_time, progress=advance)
        finally:
            await store.aclose()

    report = asyncio.run(run())
    console.print(f"wrote {report.keys:,} keys ({report.tiles:,} tiles, {report.latest:,} latest values) "
                  f"of {report.views} views in {report.seconds:.2f} s")
