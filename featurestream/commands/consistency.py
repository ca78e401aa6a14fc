"""`featurestream consistency`: do served feature values match the batch path? Exit 1 below the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from feature_store.settings import load_settings

if TYPE_CHECKING:
    from rich.console import Console

    from feature_store.consistency import ConsistencyReport

__all__ = ["consistency"]


def consistency(
    sample: Annotated[int, typer.Option(min=1, help="How many served predictions to check.")] = 500,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Lowest acceptable match rate per feature (1.0 = all).")
    ] = 1.0,
    predictions: Annotated[
        str | None,
        typer.Option(help="Parquet glob of the prediction log (default: found under the data dir's log/)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Only predictions of this model.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample, for a reproducible check.")] = 0,
    examples: Annotated[int, typer.Option(min=0, help="Mismatching examples to show per feature.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="FEATURESTREAM_DATA_DIR", help="Offline store root (event and prediction logs)."),
    ] = None,
    registry: Annotated[
        Path | None, typer.Option(envvar="FEATURESTREAM_REGISTRY", help="Registry file holding the definitions.")
    ] = None,
) -> None:
    """Check that served feature values match the batch path; exit 1 below --threshold.

    Samples served predictions from the prediction log, recomputes their
    features at the time they were served with the batch path's
    point-in-time join, and reports the match rate per feature.

    Floats match within 1e-9 (relative or absolute). Request fields and derived
    features are skipped (they are not in the offline store). Exits 1 when a
    feature's match rate is below --threshold or nothing could be compared.
    """
    import orjson
    from rich.console import Console

    from feature_store.consistency import (
        ConsistencyError,
        batch_recompute,
        check,
        find_prediction_log,
        load_served,
    )
    from feature_store.registry import load_live_repo

    overrides: dict[str, Any] = {"data_dir": data_dir, "registry": registry}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    repo = load_live_repo(settings)
    glob = predictions or find_prediction_log(settings.data_dir)
    rows = load_served(glob, sample=sample, seed=seed, model=model)
    if not rows:
        raise ConsistencyError(f"the prediction log {glob!r} holds no served predictions"
                               f"{f' of model {model!r}' if model else ''}; serve some first")
    console = Console(highlight=False, stderr=as_json)
    with _progress(console, f"recomputing {len(rows)} served rows") as advance:
        report = check(repo, rows, batch_recompute(repo, settings.data_dir, progress=advance),
                       max_examples=examples)
    if as_json:
        typer.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(console, report)
    if not report.passed(threshold):
        worst = min(report.features.values(), key=lambda r: r.rate, default=None)
        where = f"; worst: {worst.feature} {worst.rate:.2%}" if worst is not None else ""
        raise ConsistencyError(
            f"consistency {report.rate:.4%} over {report.compared} values is below the threshold {threshold:.2%}"
            f"{where}; see the mismatches above"
        )


def print_report(console: Console, report: ConsistencyReport) -> None:
    """Per-feature match rates, then a few mismatching examples."""
    from rich.table import Table

    table = Table(title=f"Consistency: {report.rate:.2%} of {report.compared} values match "
                        f"({report.rows} served rows)", title_justify="left")
    for column in ("feature", "compared", "matched", "rate"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for name, result in sorted(report.features.items()):
        style = "" if result.rate >= 1.0 else "red"
        table.add_row(name, str(result.compared), str(result.matched), f"{result.rate:.2%}", style=style)
    console.print(table)
    for result in report.features.values():
        for m in result.examples:
            console.print(f"  mismatch {m.feature} request {m.request_id} {dict(m.entity_keys)} at {m.served_at}: "
                          f"served {m.served!r}, batch {m.recomputed!r}")
    if report.skipped:
        console.print(f"not checked (not in the offline store): {', '.join(report.skipped)}")


class _progress:
    """A rich progress bar fed by the batch job's completion fraction."""

    def __init__(self, console: Console, what: str) -> None:
        from rich.progress import Progress

        self._bar = Progress(console=console, transient=True)
        self._task = self._bar.add_task(what, total=1.0)

    def __enter__(self) -> Any:
        self._bar.start()
        return lambda fraction: self._bar.update(self._task, completed=fraction)

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()
