"""`featurestream publish SOURCE FILE`: validate and publish a JSONL or Parquet file of events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from feature_store.errors import FeatureStoreError
from feature_store.settings import load_settings

__all__ = ["publish"]

_SHOWN_ERRORS = 5


class PublishRefused(FeatureStoreError):
    """Some events of the file were refused (invalid) or not delivered."""


def publish(
    source: Annotated[str, typer.Argument(help="Stream source to publish to (its topic and schema).")],
    file: Annotated[Path, typer.Argument(help="Events: JSON Lines (.jsonl/.json/.ndjson) or Parquet (.parquet).")],
    repo: Annotated[
        Path | None,
        typer.Option(help="Feature repo (.py file or folder with features.py), used when the registry is empty."),
    ] = None,
    kafka: Annotated[str | None, typer.Option(envvar="FEATURESTREAM_KAFKA", help="Kafka bootstrap servers.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Events validated and sent per batch.")] = 5_000,
) -> None:
    """Validate every event against SOURCE's schema and publish the valid ones, keyed by entity.

    Prints a summary and the first refused events with their reasons; exits 1
    when any event was refused or not delivered (the others are published).
    """
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from feature_store.publish import EventPublisher, stream_source
    from feature_store.registry import load_live_repo

    settings = load_settings(**({"kafka": kafka} if kafka else {}))
    live = load_live_repo(settings, repo)
    src = stream_source(live, source)
    total, batches = _open(file, batch_size, {n for n, f in src.schema.fields if not f.accepts_null})
    console = Console(stderr=True, highlight=False)
    errors: list[tuple[int, str]] = []
    published = 0

    async def run() -> None:
        nonlocal published
        async with EventPublisher(settings, live) as publisher:
            with Progress(TextColumn("publishing {task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console) as progress:
                task = progress.add_task(f"{file.name} -> {src.topic}", total=total)
                start = 0
                for events in batches:
                    result = await publisher.publish_many(src, events)
                    published += result.published
                    errors.extend((start + e.index + 1, e.reason) for e in result.errors)
                    start += len(events)
                    progress.update(task, completed=start)

    asyncio.run(run())
    typer.echo(f"published {published} event(s) to {src.topic}; refused {len(errors)}")
    for row, reason in errors[:_SHOWN_ERRORS]:
        typer.echo(f"  event {row}: {reason}", err=True)
    if errors:
        raise PublishRefused(f"{len(errors)} event(s) of {str(file)!r} were not published (see above); "
                             f"fix them and publish those again")


def _open(file: Path, batch_size: int, drop_null: set[str]) -> tuple[int | None, Iterator[list[Any]]]:
    """(event count if known, batches of events): raw JSON lines (validated as bytes) or Parquet rows.

    Parquet nulls of fields that refuse null mean "absent" (optional fields), so they are dropped.
    """
    if not file.is_file():
        raise PublishRefused(f"no such file {str(file)!r}; give a .jsonl or .parquet file of events")
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(file)

        def parquet_batches() -> Iterator[list[Any]]:
            for batch in parquet.iter_batches(batch_size=batch_size):
                yield [{k: v for k, v in row.items() if v is not None or k not in drop_null}
                       for row in batch.to_pylist()]

        return parquet.metadata.num_rows, parquet_batches()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with file.open("rb") as f:
            total = sum(1 for line in f if line.strip())

        def json_batches() -> Iterator[list[Any]]:
            with file.open("rb") as f:
                batch: list[bytes] = []
                for line in f:
                    if line.strip():
                        batch.append(line)
                        if len(batch) >= batch_size:
                            yield batch
                            batch = []
                if batch:
                    yield batch

        return total, json_batches()
    raise PublishRefused(f"cannot read {str(file)!r}: use a .jsonl (JSON Lines) or .parquet file")
