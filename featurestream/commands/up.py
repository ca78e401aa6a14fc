"""`featurestream up`: run the local stack (Redis + a Kafka-protocol broker) until Ctrl-C."""

from __future__ import annotations

import signal
import time
from typing import Annotated, Any

import typer

from feature_store.errors import ServiceStartError
from feature_store.local_stack import LocalStack
from feature_store.settings import load_settings

__all__ = ["up"]

_WATCH_S = 0.5  # how often we look for a service that died on its own


def up(
    redis: Annotated[
        str | None,
        typer.Option(envvar="FEATURESTREAM_REDIS", help="Use this Redis URL instead of starting redis-server."),
    ] = None,
    kafka: Annotated[
        str | None,
        typer.Option(envvar="FEATURESTREAM_KAFKA", help="Use these Kafka bootstrap servers instead of starting Tansu."),
    ] = None,
    redis_port: Annotated[
        int | None,
        typer.Option(envvar="FEATURESTREAM_REDIS_PORT", help="Port for the local redis-server (default: a free one)."),
    ] = None,
    kafka_port: Annotated[
        int | None,
        typer.Option(envvar="FEATURESTREAM_KAFKA_PORT", help="Port for the local broker (default: a free one)."),
    ] = None,
) -> None:
    """Start Redis and a Kafka-protocol broker on 127.0.0.1 and keep them up until Ctrl-C.

    Prints the URLs and the env lines that point other featurestream
    processes at them. Stops everything on Ctrl-C or SIGTERM and exits 0.
    """
    given: dict[str, Any] = {"redis": redis, "kafka": kafka, "redis_port": redis_port, "kafka_port": kafka_port}
    settings = load_settings(**{k: v for k, v in given.items() if v is not None})
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops us like Ctrl-C
    stack = LocalStack.from_settings(settings)
    try:
        stack.start()
        _print_stack(stack)
        while not (dead := stack.dead()):
            time.sleep(_WATCH_S)
        raise ServiceStartError(f"{dead[0]} exited on its own: {stack.last_output(dead[0]) or 'no output'}")
    except KeyboardInterrupt:
        typer.echo("stopping", err=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()


def _print_stack(stack: LocalStack) -> None:
    pids = stack.pids()
    for name, url in (("redis", stack.redis_url), ("kafka", stack.kafka_bootstrap)):
        how = f"started, pid {pids[name]}" if name in pids else "given, not started here"
        typer.echo(f"{name}: {url}  ({how})")
    typer.echo("")
    for var, value in stack.env().items():
        typer.echo(f"export {var}={value}")
    typer.echo("")
    typer.echo("Ctrl-C stops everything.")
