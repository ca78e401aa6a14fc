"""`featurestream demo`: the whole loop on this machine, then a short report (see `featurestream.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["demo"]


def demo(
    events: Annotated[int, typer.Option(min=100, help="Transactions to publish as history.")] = 20_000,
    duration: Annotated[
        float, typer.Option(min=10.0, help="Upper bound of the whole run, seconds (steps past it are skipped).")
    ] = 180.0,
    predictions: Annotated[int, typer.Option(min=1, help="Live predictions to serve through the API.")] = 200,
    users: Annotated[int, typer.Option(min=10, help="Card holders in the generated data.")] = 500,
    linger: Annotated[
        float, typer.Option(min=0.0, help="Keep the stack and the dashboard up this many seconds after the report.")
    ] = 0.0,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Keep the demo's data (event logs, registry, models) here instead of a temp dir."),
    ] = None,
) -> None:
    """Run the end-to-end demo: local Kafka (Tansu) + Redis, worker, API, training, predictions, consistency.

    Starts a private Tansu and redis-server on 127.0.0.1 (it never uses the
    services FEATURESTREAM_KAFKA / FEATURESTREAM_REDIS point at), then
    publishes a generated card-transaction stream with a few malformed events,
    trains and registers a model on a point-in-time training set, serves live
    predictions through the HTTP API, streams labels back and checks that the
    served features match the batch path. Ctrl-C stops everything cleanly.
    Exits 1 when a step fails, a component is missing or the consistency is
    below 100%; 130 after Ctrl-C.
    """
    import os

    from rich.console import Console

    from feature_store.logging import configure_logging
    from feature_store.settings import load_settings
    from featurestream.demo import Demo, DemoConfig, DemoFailed, DemoReport, print_report

    if "FEATURESTREAM_LOG_LEVEL" not in os.environ:  # the report is the output; logs only for trouble
        configure_logging(load_settings(log_level="WARNING"))
    console = Console(highlight=False)
    runner = Demo(DemoConfig(events=events, duration_s=duration, predictions=predictions, users=users,
                             data_dir=data_dir, linger_s=linger), console)
    printed: list[bool] = []

    def done(report: DemoReport) -> None:
        print_report(console, report, api_url=runner.api_url if linger else None)
        printed.append(True)

    report = runner.run(on_done=done)
    if not printed:  # interrupted or stopped before the end: report what ran
        print_report(console, report)
    if any(s.name == "interrupted" for s in report.steps):
        raise typer.Exit(130)
    failed = [s for s in report.steps if s.status == "failed"]
    if failed:
        raise DemoFailed(f"demo step {failed[0].name!r} failed: {failed[0].detail}")
    incomplete = [s for s in report.steps if s.status != "ok"]
    if incomplete:
        raise DemoFailed(f"demo incomplete: {incomplete[0].name} {incomplete[0].status} ({incomplete[0].detail})")
    if report.figures.get("consistency", 1.0) < 1.0:
        raise DemoFailed(f"consistency {report.figures['consistency']:.2%} is below 100%; see the mismatches above")
