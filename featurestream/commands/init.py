"""`featurestream init [DIR]`: scaffold a feature repo from the card-fraud example."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from feature_store.errors import DefinitionError

__all__ = ["init"]

_README = """\
# Feature repo

`features.py` declares every feature of this repo once: entities, sources
(a Kafka stream of card transactions, Parquet user profiles), feature views
and the `fraud_detection` service. The stream worker, batch jobs and the
serving API all read these definitions from the registry.

Next steps:

    featurestream apply {dir} --dry-run   # check every definition, show the plan
    featurestream apply {dir}             # store it in the registry
    featurestream up                      # local Redis + Kafka-protocol broker

Edit `features.py` and run `featurestream apply` again: the plan shows what
changes, and marks BREAKING changes (window, hop, function, transform,
fields, entity, key), which become a new view version to backfill with
`featurestream materialize`. The `profiles` batch source reads
`sources/profiles/*.parquet` under the data dir (FEATURESTREAM_DATA_DIR).
"""


def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new repo (created if missing).")] = Path("."),
) -> None:
    """Create DIR/features.py (the card-fraud example) and a short README; never overwrites features.py."""
    from feature_store.examples import card_fraud

    target = directory / "features.py"
    if target.exists():
        raise DefinitionError(
            f"{str(target)!r} already exists; pick another folder or move the file away (init never overwrites it)"
        )
    example = Path(card_fraud.__file__).with_name("features.py")
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
    readme = directory / "README.md"
    wrote = [str(target)]
    if not readme.exists():
        readme.write_text(_README.format(dir=directory), encoding="utf-8")
        wrote.append(str(readme))
    typer.echo(f"created {', '.join(wrote)}")
    typer.echo(f"next: featurestream apply {directory}")
