"""`featurestream score`: batch predictions for an entity table, with point-in-time features.

The features are the training-set join (`FeatureStore.get_training_set`, the
same point-in-time semantics as training), so a static score equals what
the online path would have answered at each row's time. The chosen model
version predicts; its fallback answers rows the model cannot, flagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from feature_store.settings import load_settings
from featurestream.commands._options import DataDirOption, RegistryOption, RepoOption

__all__ = ["score"]

_CHUNK = 5_000


def score(
    model: Annotated[str, typer.Option(help="Registered model name.")],
    entities: Annotated[Path, typer.Option(help="Parquet of entity rows: join keys, a time column, request fields.")],
    out: Annotated[Path, typer.Option(help="Parquet to write: input, features, prediction, model_version.")],
    version: Annotated[int | None, typer.Option(help="Model version (default: production).")] = None,
    timestamp_column: Annotated[str, typer.Option(help="Column holding each row's time.")] = "event_timestamp",
    repo: RepoOption = None,
    data_dir: DataDirOption = None,
    registry: RegistryOption = None,
) -> None:
    """Score every entity row with the model version and write the predictions to Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.console import Console

    from feature_store.models import ModelRegistry
    from feature_store.registry import load_live_repo
    from feature_store.store import FeatureStore
    from featurestream.commands._batch_progress import fraction_bar

    overrides: dict[str, Any] = {"data_dir": data_dir, "registry": registry}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    models = ModelRegistry.from_settings(settings)
    chosen = models.get(model, version)
    predictor = models.load(chosen)
    fallback = _fallback(models, chosen.fallback)
    console = Console(stderr=True, highlight=False)
    if chosen.feature_service is not None:
        store = FeatureStore(settings, load_live_repo(settings, repo))
        with fraction_bar(console, "point-in-time features") as advance:
            table = store.get_training_set(entities, service=chosen.feature_service,
                                           timestamp_column=timestamp_column, progress=advance)
    else:
        table = pq.read_table(entities)
    predictions: list[float | None] = []
    flags: list[bool] = []
    with fraction_bar(console, f"scoring with {model} v{chosen.version}") as advance:
        for start in range(0, max(table.num_rows, 1), _CHUNK):
            rows = table.slice(start, _CHUNK).to_pylist()
            if not rows:
                break
            try:
                answered = predictor.predict(rows)
            except Exception:  # the model cannot score this chunk: the fallback answers each row
                answered = [None] * len(rows)
            for row, value in zip(rows, answered, strict=True):
                used = value is None and fallback is not None
                predictions.append(fallback(row) if used and fallback is not None else value)
                flags.append(used)
            advance(min(1.0, (start + len(rows)) / max(table.num_rows, 1)))
    result = (table.append_column("prediction", pa.array(predictions, pa.float64()))
              .append_column("model", pa.array([model] * table.num_rows, pa.string()))
              .append_column("model_version", pa.array([chosen.version] * table.num_rows, pa.int64()))
              .append_column("fallback", pa.array(flags, pa.bool_())))
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(result, out)
    console.print(f"wrote {result.num_rows} predictions of {model} v{chosen.version} to {out} "
                  f"({sum(flags)} by the fallback)")


def _fallback(models: Any, declared: str | None) -> Any:
    """A row -> prediction function for the declared fallback, or None."""
    if declared is None:
        return None
    if "@" in declared:
        name, _, pinned = declared.partition("@")
        baseline = models.load(models.get(name, int(pinned)))
        return lambda row: baseline.predict([row])[0]
    from feature_store.expressions import parse

    expression = parse(declared)

    def rule(row: dict[str, Any]) -> float | None:
        value = expression.evaluate(row)
        return None if value is None else float(value)

    return rule
