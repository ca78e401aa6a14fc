"""The one `featurestream` command line.

Each subcommand lives in `featurestream/commands/<name>.py` and is registered
here in one line: `app.command("name")(module.fn)` for a command, or
`app.add_typer(module.app, name="group")` for a group (e.g. `dlq replay`).
`main()` turns any FeatureStoreError into one `error: ...` line and exit 1.
"""

from __future__ import annotations

import typer

from feature_store.errors import FeatureStoreError
from feature_store.logging import configure_logging
from feature_store.settings import get_settings
from featurestream.commands import (
    apply,
    compact,
    consistency,
    demo,
    dlq,
    init,
    materialize,
    models,
    publish,
    score,
    serve,
    train,
    training_set,
    up,
    worker,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="featurestream",
    help="A real-time streaming feature store: define, stream, serve, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Validate settings and set up logging once, before any subcommand runs."""
    configure_logging(get_settings())


app.command("up")(up.up)
app.command("init")(init.init)
app.command("apply")(apply.apply)
app.command("consistency")(consistency.consistency)
app.command("demo")(demo.demo)
app.command("training-set")(training_set.training_set)
app.command("materialize")(materialize.materialize)
app.command("compact")(compact.compact)
app.command("worker")(worker.worker)
app.command("publish")(publish.publish)
app.add_typer(dlq.app, name="dlq")
app.command("serve")(serve.serve)
app.command("score")(score.score)
app.add_typer(models.app, name="models")
app.command("train")(train.train)
app.add_typer(train.runs_app, name="runs")


def main() -> None:
    """Console entry point: run the app; our errors print one line and exit 1."""
    try:
        app()
    except FeatureStoreError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise SystemExit(1) from None
