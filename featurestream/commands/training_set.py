"""`featurestream training-set`: a point-in-time training set as Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from feature_store.settings import load_settings
from featurestream.commands._options import DataDirOption, RegistryOption, RepoOption

__all__ = ["training_set"]


def training_set(
    entities: Annotated[
        Path, typer.Option(help="Parquet file of entity rows: join keys, a timestamp column, any labels.")
    ],
    out: Annotated[Path, typer.Option(help="Parquet file to write (input columns + one column per feature).")],
    service: Annotated[str | None, typer.Option(help="Feature service to join (or give --feature).")] = None,
    feature: Annotated[
        list[str] | None, typer.Option(help="A 'view:feature' to join; repeat for several (instead of --service).")
    ] = None,
    timestamp_column: Annotated[
        str, typer.Option(help="Column holding each row's time (epoch ms or a timestamp).")
    ] = "event_timestamp",
    ignore_ingest_time: Annotated[
        bool, typer.Option("--ignore-ingest-time",
                           help="Count events by event time only (pure backfill), not as they were served.")
    ] = False,
    repo: RepoOption = None,
    data_dir: DataDirOption = None,
    registry: RegistryOption = None,
) -> None:
    """Join features to entity rows as of each row's time and write Parquet.

    "As served" by default: a row at t sees only events applied by t
    (event_time <= t and ingest_time <= t), i.e. what the online store
    answered then. Rows keep their order; none is dropped.
    """
    from rich.console import Console

    from feature_store.registry import load_live_repo
    from feature_store.store import FeatureStore
    from featurestream.commands._batch_progress import fraction_bar

    overrides: dict[str, Any] = {"data_dir": data_dir, "registry": registry}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    store = FeatureStore(settings, load_live_repo(settings, repo))
    console = Console(stderr=True, highlight=False)
    with fraction_bar(console, "training set") as advance:
        table = store.get_training_set(entities, feature or None, service=service, timestamp_column=timestamp_column,
                                       ignore_ingest_time=ignore_ingest_time, out=out, progress=advance)
    console.print(f"wrote {table.num_rows} rows x {table.num_columns} columns to {out}")
