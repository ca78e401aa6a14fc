"""`featurestream dlq ...`: look at dead letters, fix them, re-publish them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from feature_store.errors import FeatureStoreError
from feature_store.settings import load_settings

if TYPE_CHECKING:
    from streams.dlq import ReplayResult

__all__ = ["app"]

app = typer.Typer(help="Dead letters of stream sources: export, fix and replay them.", no_args_is_help=True)

_SHOWN_ERRORS = 5

RepoOption = Annotated[
    Path | None,
    typer.Option(help="Feature repo (.py file or folder with features.py), used when the registry is empty."),
]
KafkaOption = Annotated[str | None, typer.Option(envvar="FEATURESTREAM_KAFKA", help="Kafka bootstrap servers.")]


class ReplayIncomplete(FeatureStoreError):
    """Some dead letters could not be re-published."""


@app.command("replay")
def replay(
    source: Annotated[str, typer.Argument(help="Stream source whose `<topic>.dlq` to replay.")],
    fix_file: Annotated[
        Path | None,
        typer.Option(help="JSONL of fixed events {partition, offset, event} (see `dlq export`); only these are "
                          "re-published."),
    ] = None,
    repo: RepoOption = None,
    kafka: KafkaOption = None,
) -> None:
    """Re-publish dead letters of SOURCE through validation.

    Without --fix-file: every dead letter not replayed before (the replay
    group remembers where it stopped) is re-published as it was, e.g. after a
    schema or clock fix. With --fix-file: the fixed events given are
    re-published instead of the originals. Exits 1 when any event is still
    refused.
    """
    import asyncio

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from feature_store.publish import EventPublisher, stream_source
    from feature_store.registry import load_live_repo
    from streams.dlq import read_dead_letters, read_fix_file, replay_dead_letters

    settings = load_settings(**({"kafka": kafka} if kafka else {}))
    live = load_live_repo(settings, repo)
    src = stream_source(live, source)
    fixes = read_fix_file(fix_file) if fix_file is not None else None
    console = Console(stderr=True, highlight=False)

    async def run() -> ReplayResult:
        async with EventPublisher(settings, live) as publisher:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                          console=console) as progress:
                task = progress.add_task(f"reading {src.dlq_topic}", total=None)
                letters = await read_dead_letters(
                    publisher.bootstrap, src, group_id=f"featurestream-dlq-replay.{src.topic}",
                    from_start=fixes is not None, commit=fixes is None,
                    progress=lambda n: progress.update(task, description=f"reading {src.dlq_topic}: {n}"))
                progress.update(task, description=f"re-publishing to {src.topic}")
                return await replay_dead_letters(publisher, src, letters, fixes)

    result = asyncio.run(run())
    typer.echo(f"dead letters read: {result.read}; re-published: {result.published}; "
               f"still refused: {len(result.errors)}")
    for letter, reason in result.errors[:_SHOWN_ERRORS]:
        typer.echo(f"  partition {letter.partition} offset {letter.offset}: {reason}", err=True)
    for partition, offset in result.missing_fixes[:_SHOWN_ERRORS]:
        typer.echo(f"  fix for partition {partition} offset {offset}: no such dead letter", err=True)
    if result.errors or result.missing_fixes:
        raise ReplayIncomplete(
            "some dead letters were not re-published (see above); export them with `featurestream dlq export`, "
            "fix the events and replay with --fix-file")


@app.command("export")
def export(
    source: Annotated[str, typer.Argument(help="Stream source whose `<topic>.dlq` to export.")],
    out: Annotated[Path, typer.Argument(help="JSONL file to write (a fix-file template).")],
    repo: RepoOption = None,
    kafka: KafkaOption = None,
) -> None:
    """Write every dead letter of SOURCE as JSONL {partition, offset, reason, event}: edit, then replay."""
    import asyncio

    from feature_store.publish import stream_source
    from feature_store.registry import load_live_repo
    from streams.dlq import export_dead_letters, read_dead_letters

    settings = load_settings(**({"kafka": kafka} if kafka else {}))
    live = load_live_repo(settings, repo)
    src = stream_source(live, source)
    if not settings.kafka:
        raise ReplayIncomplete("no Kafka to read from: set FEATURESTREAM_KAFKA (or run `featurestream up`)")
    letters = asyncio.run(read_dead_letters(settings.kafka, src))
    count = export_dead_letters(letters, out)
    typer.echo(f"exported {count} dead letter(s) of {src.dlq_topic} to {out}")
