"""`featurestream models ...`: list, show, register, promote and roll back registered models."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import orjson
import typer

from feature_store.errors import DefinitionError
from feature_store.settings import Settings, load_settings

if TYPE_CHECKING:
    from feature_store.models import Flavor

__all__ = ["app"]

app = typer.Typer(help="The model registry: versions, stages, lineage.", no_args_is_help=True)

_Registry = Annotated[Path | None, typer.Option(envvar="FEATURESTREAM_REGISTRY",
                                                help="Registry file; models.sqlite lives next to it.")]
_DataDir = Annotated[Path | None, typer.Option(envvar="FEATURESTREAM_DATA_DIR",
                                               help="Data dir; artifacts live under models/artifacts.")]


def _settings(registry: Path | None, data_dir: Path | None) -> Settings:
    overrides: dict[str, Any] = {"registry": registry, "data_dir": data_dir}
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _registry(registry: Path | None, data_dir: Path | None) -> Any:
    from feature_store.models import ModelRegistry

    return ModelRegistry.from_settings(_settings(registry, data_dir))


def _json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise DefinitionError(f"--{what} is not JSON; write e.g. '{{\"auc\": 0.91}}'") from None


@app.command("list")
def list_models(registry: _Registry = None, data_dir: _DataDir = None) -> None:
    """Every model version with its stage and metrics."""
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "version", "stage", "flavor", "service", "metrics", "created by")
    for v in _registry(registry, data_dir).list():
        table.add_row(v.name, str(v.version), v.stage, v.flavor, v.feature_service or "-",
                      ", ".join(f"{k}={val:g}" for k, val in v.metrics.items()) or "-", v.created_by)
    Console().print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Model name.")],
         version: Annotated[int | None, typer.Option(help="One version (default: all, with the audit trail).")] = None,
         registry: _Registry = None, data_dir: _DataDir = None) -> None:
    """Versions (metadata, lineage) and the stage audit trail of a model, as JSON."""
    models = _registry(registry, data_dir)
    if version is not None:
        doc: Any = models.get(name, version).to_dict()
    else:
        doc = {"versions": [v.to_dict() for v in models.list(name)],
               "audit": [e.to_dict() for e in models.audit(name)]}
    typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


@app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    flavor: Annotated[str, typer.Option(help="river | sklearn | rule.")],
    artifact: Annotated[Path | None, typer.Option(help="Pickled model file (river, sklearn).")] = None,
    expression: Annotated[str | None, typer.Option(help="The rule (flavor rule).")] = None,
    feature_service: Annotated[str | None, typer.Option(help="Feature service the model consumes.")] = None,
    feature: Annotated[list[str] | None, typer.Option(help="Input column, in order (sklearn); repeat.")] = None,
    metrics: Annotated[str | None, typer.Option(help="JSON object of metrics.")] = None,
    params: Annotated[str | None, typer.Option(help="JSON object of training parameters.")] = None,
    training_set_ref: Annotated[str | None, typer.Option(help="Where the training set is (lineage).")] = None,
    data_start: Annotated[int | None, typer.Option(help="Training data start, epoch ms.")] = None,
    data_end: Annotated[int | None, typer.Option(help="Training data end, epoch ms.")] = None,
    fallback: Annotated[str | None, typer.Option(help="Fallback: a rule expression or model@version.")] = None,
    repo: Annotated[Path | None, typer.Option(help="Feature repo, when the registry holds no definitions.")] = None,
    registry: _Registry = None,
    data_dir: _DataDir = None,
) -> None:
    """Register a new immutable version (stage staging); prints its number."""
    if (artifact is None) == (expression is None):
        raise DefinitionError("give --artifact FILE (river, sklearn) or --expression (rule)")
    payload: Any = artifact.read_bytes() if artifact is not None else expression
    data_range = (data_start, data_end) if data_start is not None and data_end is not None else None
    from feature_store.models import ModelRegistry

    settings = _settings(registry, data_dir)
    service_fp = None
    if feature_service is not None:  # lineage: the exact definition the model was trained on
        from feature_store.registry import load_live_repo

        service_fp = load_live_repo(settings, repo).service(feature_service).fingerprint
    version = ModelRegistry.from_settings(settings).register(
        name, payload, flavor=cast("Flavor", flavor), feature_service=feature_service, service_fingerprint=service_fp,
        features=feature or (), metrics=_json(metrics, "metrics"), params=_json(params, "params"),
        training_set_ref=training_set_ref, data_range=data_range, fallback=fallback, actor=getpass.getuser())
    typer.echo(f"registered {name} version {version.version} (sha256 {version.sha256[:12]}, stage staging)")


@app.command("promote")
def promote(name: Annotated[str, typer.Argument(help="Model name.")],
            version: Annotated[int, typer.Argument(help="Version to move.")],
            stage: Annotated[str, typer.Argument(help="staging | production | archived.")] = "production",
            reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "",
            registry: _Registry = None, data_dir: _DataDir = None) -> None:
    """Move a version to a stage (production archives the current production version)."""
    moved = _registry(registry, data_dir).promote(name, version, stage, actor=getpass.getuser(), reason=reason)
    typer.echo(f"{name} version {moved.version} is now {moved.stage}")


@app.command("rollback")
def rollback(name: Annotated[str, typer.Argument(help="Model name.")],
             reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "",
             registry: _Registry = None, data_dir: _DataDir = None) -> None:
    """Production goes back to the version that held it before."""
    restored = _registry(registry, data_dir).rollback(name, actor=getpass.getuser(), reason=reason)
    typer.echo(f"{name}: production is version {restored.version} again")
