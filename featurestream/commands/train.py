"""`featurestream train` (fit, gate, register) and `featurestream runs list|compare`."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from feature_store.errors import DefinitionError
from feature_store.settings import Settings, load_settings

__all__ = ["runs_app", "train"]

runs_app = typer.Typer(help="Training runs: list them, compare them side by side.", no_args_is_help=True)

_Registry = Annotated[Path | None, typer.Option(envvar="FEATURESTREAM_REGISTRY",
                                                help="Registry file; models.sqlite and runs.sqlite live next to it.")]
_DataDir = Annotated[Path | None, typer.Option(envvar="FEATURESTREAM_DATA_DIR",
                                               help="Offline store root (event log, artifacts, monitoring).")]
_CHECK = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


def _settings(registry: Path | None, data_dir: Path | None) -> Settings:
    overrides: dict[str, Any] = {"registry": registry, "data_dir": data_dir}
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _estimator(spec: str) -> Any:
    """`river-logistic` (scaler + logistic regression) or `module:callable` returning an estimator."""
    if spec == "river-logistic":
        from river import linear_model, preprocessing

        return preprocessing.StandardScaler() | linear_model.LogisticRegression()
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise DefinitionError(f"--estimator {spec!r}: use 'river-logistic' or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise DefinitionError(f"--estimator {spec!r} cannot be loaded ({exc}); check the module path") from None
    return factory()


def _checks(specs: list[str]) -> tuple[Any, ...]:
    from feature_store.training import Check

    out = []
    for spec in specs:
        match = _CHECK.match(spec)
        if match is None:
            raise DefinitionError(f"--check {spec!r}: write METRIC OP VALUE, e.g. 'roc_auc>=0.7'")
        out.append(Check(metric=match[1], op=match[2], value=float(match[3])))  # type: ignore[arg-type]
    return tuple(out)


def _params(specs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise DefinitionError(f"--param {spec!r}: write KEY=VALUE")
        params[key] = value
    return params


def train(
    model: Annotated[str, typer.Option(help="Name to register the model under.")],
    label: Annotated[str, typer.Option(help="Label column of the training set.")],
    baseline: Annotated[str, typer.Option(
        help="What the model must beat on the holdout: a rule expression (e.g. 'amount > 500') or NAME@VERSION.")],
    training_set: Annotated[Path | None, typer.Option(
        help="A training set Parquet file (e.g. from `featurestream training-set`).")] = None,
    entities: Annotated[Path | None, typer.Option(
        help="Entity rows Parquet (keys, timestamp, label): the training set is joined from --service.")] = None,
    service: Annotated[str | None, typer.Option(help="Feature service to join to --entities.")] = None,
    feature: Annotated[list[str] | None, typer.Option(
        help="Model input column; repeat (default: every numeric column but label and timestamp).")] = None,
    estimator: Annotated[str, typer.Option(
        help="'river-logistic' or 'package.module:factory' returning a river or scikit-learn style model.")
    ] = "river-logistic",
    timestamp_column: Annotated[str, typer.Option(help="Row time column; the newest rows are the holdout.")
                                ] = "event_timestamp",
    holdout: Annotated[float, typer.Option(help="Fraction of the newest rows held out for the gate.")] = 0.2,
    metric: Annotated[str, typer.Option(help="Gate metric (roc_auc, log_loss, accuracy, brier, mae, rmse).")
                      ] = "roc_auc",
    min_improvement: Annotated[float, typer.Option(help="How much the model must beat the baseline by.")] = 0.0,
    check: Annotated[list[str] | None, typer.Option(help="Extra holdout check, e.g. 'roc_auc>=0.7'; repeat.")
                     ] = None,
    task: Annotated[str, typer.Option(help="binary or regression.")] = "binary",
    online: Annotated[bool, typer.Option("--online", help="Declare the model online: the worker keeps learning "
                                                          "from labels and snapshots new versions.")] = False,
    fallback: Annotated[str | None, typer.Option(help="Rule expression or NAME@VERSION answering when the "
                                                      "model cannot.")] = None,
    param: Annotated[list[str] | None, typer.Option(help="KEY=VALUE recorded with the run; repeat.")] = None,
    repo: Annotated[Path | None, typer.Option(help="Feature repo file/folder (when the registry holds none).")
                    ] = None,
    registry: _Registry = None,
    data_dir: _DataDir = None,
) -> None:
    """Fit a model on a point-in-time training set, gate it against the baseline, register it if it passes.

    The newest `--holdout` of rows (by time) is held out; the model is
    accepted only if its `--metric` beats the baseline's by more than
    `--min-improvement` and every `--check` holds. Accepted versions are
    registered (stage staging); rejected ones are recorded as runs with the
    reason and never registered. Exit code 2 when the gate rejects.
    """
    from rich.console import Console

    from feature_store.models import ModelRegistry
    from feature_store.training import AcceptanceGate, RunStore, train_model
    from featurestream.commands._batch_progress import fraction_bar

    if (training_set is None) == (entities is None):
        raise DefinitionError("give --training-set FILE, or --entities FILE with --service NAME")
    if task not in ("binary", "regression"):
        raise DefinitionError(f"--task {task!r}: use binary or regression")
    settings = _settings(registry, data_dir)
    console = Console(stderr=True, highlight=False)
    models = ModelRegistry.from_settings(settings)
    service_name = service
    fingerprint = None
    if entities is not None:
        if service is None:
            raise DefinitionError("--entities needs --service: the feature service to join")
        from feature_store.registry import load_live_repo
        from feature_store.store import FeatureStore

        store = FeatureStore(settings, load_live_repo(settings, repo))
        fingerprint = store.repo.service(service).fingerprint
        with fraction_bar(console, "training set") as advance:
            table: Any = store.get_training_set(entities, service=service, timestamp_column=timestamp_column,
                                                progress=advance)
        reference = f"{entities}#service={service}"
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(str(training_set))
        except OSError as exc:
            raise DefinitionError(f"cannot read --training-set {str(training_set)!r}: {exc}") from None
        reference = str(training_set)
    base: Any = baseline
    if "@" in baseline:
        name, _, version = baseline.partition("@")
        if not version.isdigit():
            raise DefinitionError(f"--baseline {baseline!r}: write a model baseline as NAME@VERSION")
        base = models.get(name, int(version))
    gate = AcceptanceGate(primary=metric, min_improvement=min_improvement, checks=_checks(check or []))
    params = {**_params(param or []), "estimator": estimator, **({"online": True} if online else {})}
    with fraction_bar(console, "fit") as advance:
        result = train_model(
            model, _estimator(estimator), table, label=label, registry=models, runs=RunStore.from_settings(settings),
            baseline=base, gate=gate, features=feature or None, timestamp_column=timestamp_column,
            task=task,  # type: ignore[arg-type]
            holdout_fraction=holdout, feature_service=service_name, service_fingerprint=fingerprint,
            training_set_ref=reference, params=params, fallback=fallback, data_dir=settings.data_dir,
            progress=advance)
    run = result.run
    shown = ", ".join(f"{k}={v:.4f}" for k, v in run.metrics.items() if k != "rows")
    base_shown = ", ".join(f"{k}={v:.4f}" for k, v in run.baseline_metrics.items() if k != "rows")
    console.print(f"run {run.run_id}: model ({shown}) baseline ({base_shown}) in {run.duration_s:.1f}s", markup=False)
    if result.version is None:
        typer.echo(f"rejected: {run.reason}", err=True)
        raise typer.Exit(code=2)
    typer.echo(f"registered {model} version {result.version.version} (staging): {run.reason}")


@runs_app.command("list")
def list_runs(
    model: Annotated[str | None, typer.Option(help="Only runs of this model.")] = None,
    status: Annotated[str | None, typer.Option(help="accepted, rejected, recorded or failed.")] = None,
    limit: Annotated[int, typer.Option(help="Newest runs shown.")] = 20,
    registry: _Registry = None,
    data_dir: _DataDir = None,
) -> None:
    """Training runs (batch fits and online snapshots), newest first."""
    from rich.console import Console
    from rich.table import Column, Table

    from feature_store.training import RunStore

    table = Table("model", "kind", "status", "version", "metrics", "rows / labels", "duration", "reason")
    table.columns.insert(0, Column("run", no_wrap=True, min_width=12))
    for r in RunStore.from_settings(_settings(registry, data_dir)).list(model, status=status, limit=limit):
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in r.metrics.items() if k in ("roc_auc", "log_loss", "accuracy",
                                                                                  "rolling_accuracy", "mae"))
        size = r.data_refs.get("rows") or r.metrics.get("labels") or "-"
        table.add_row(r.run_id, r.model, r.kind, r.status, str(r.model_version or "-"), metrics or "-", str(size),
                      f"{r.duration_s:.1f}s", r.reason[:60])
    Console().print(table)


@runs_app.command("compare")
def compare_runs(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids (see `featurestream runs list`).")],
    registry: _Registry = None,
    data_dir: _DataDir = None,
) -> None:
    """Runs side by side: one row per field, metric and parameter."""
    from rich.console import Console
    from rich.table import Column, Table

    from feature_store.training import RunStore

    compared = RunStore.from_settings(_settings(registry, data_dir)).compare(run_ids)
    table = Table(Column("field", no_wrap=True, min_width=20),
                  *(Column(r, overflow="fold", min_width=12) for r in compared["runs"]))
    for row in compared["rows"]:
        table.add_row(row["field"], *("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
                                      for v in row["values"]))
    Console().print(table)
