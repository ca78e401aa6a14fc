"""`featurestream serve`: the HTTP API (features, predict, push, models, metrics) under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from feature_store.settings import load_settings

__all__ = ["serve"]


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    repo: Annotated[
        Path | None, typer.Option(help="Feature repo file/folder, used when the registry holds no definitions.")
    ] = None,
    redis: Annotated[str | None, typer.Option(envvar="FEATURESTREAM_REDIS", help="Redis URL of the online store.")
                     ] = None,
    kafka: Annotated[str | None, typer.Option(envvar="FEATURESTREAM_KAFKA",
                                              help="Kafka bootstrap servers (push, prediction log).")] = None,
    registry: Annotated[Path | None, typer.Option(envvar="FEATURESTREAM_REGISTRY",
                                                  help="Registry file holding the definitions.")] = None,
    data_dir: Annotated[Path | None, typer.Option(envvar="FEATURESTREAM_DATA_DIR",
                                                  help="Data dir (model artifacts live under it).")] = None,
    max_entities: Annotated[int, typer.Option(min=1, help="Most entities per request (more: 413).")] = 1000,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs latency).")] = False,
    definitions_poll_seconds: Annotated[float, typer.Option(
        min=0, help="How often to look for a new `featurestream apply` and serve it (0: never).")] = 2.0,
) -> None:
    """Run the HTTP API (features, predict, push, models, metrics) with uvicorn until Ctrl-C.

    Routes: POST /v1/features, /v1/predict/{model}, /v1/push/{source}, the model registry
    under /v1/models, /metrics, /healthz, /readyz, OpenAPI docs at /docs. API keys come
    from FEATURESTREAM_API_KEYS / FEATURESTREAM_ADMIN_KEYS.
    """
    from serving import ServingConfig, create_app
    from serving.server import run

    overrides: dict[str, Any] = {"redis": redis, "kafka": kafka, "registry": registry, "data_dir": data_dir}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    app = create_app(settings, repo_path=repo, config=ServingConfig(max_entities=max_entities,
                                                                    definitions_poll_s=definitions_poll_seconds))
    typer.echo(f"serving on http://{host}:{port} (docs at /docs)", err=True)
    run(app, host=host, port=port, access_log=access_log)
