"""Model flavors: how an artifact's bytes become something that predicts.

Every loaded model answers `predict(rows) -> list[float | None]` for rows of
named inputs (fetched features as `view__feature`, request fields, derived
features). Flavors:

- `river`: a pickled river estimator; `predict_proba_one` (probability of the
  positive class) when it has one, else `predict_one`.
- `sklearn`: a pickled estimator following the scikit-learn API;
  `predict_proba` (last column) when it has one, else `predict`, on a 2-D
  list whose columns follow the version's `features` order.
- `rule`: an expression of `feature_store.expressions` (the artifact is its
  UTF-8 source); also the usual fallback.

Artifacts are unpickled only after their sha256 was checked by the registry.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from feature_store.errors import DefinitionError
from feature_store.expressions import Expression, parse

__all__ = ["FLAVORS", "Flavor", "LoadedModel", "artifact_bytes", "load_model"]

Flavor = Literal["river", "sklearn", "rule"]
FLAVORS: tuple[Flavor, ...] = ("river", "sklearn", "rule")


class LoadedModel(Protocol):
    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[float | None]: ...


@dataclass
class RiverModel:
    model: Any

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[float | None]:
        out: list[float | None] = []
        proba = getattr(self.model, "predict_proba_one", None)
        for row in rows:
            x = {k: v for k, v in row.items() if v is not None}
            if proba is not None:
                probs = proba(x)
                out.append(_positive(probs))
            else:
                out.append(_number(self.model.predict_one(x)))
        return out


@dataclass
class SklearnModel:
    model: Any
    features: Sequence[str]

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[float | None]:
        matrix = [[row.get(name) for name in self.features] for row in rows]
        if hasattr(self.model, "predict_proba"):
            return [_number(r[-1]) for r in self.model.predict_proba(matrix)]
        return [_number(v) for v in self.model.predict(matrix)]


@dataclass
class RuleModel:
    expression: Expression

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[float | None]:
        return [_number(self.expression.evaluate(row)) for row in rows]


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value)


def _positive(probs: Mapping[Any, float]) -> float | None:
    """Probability of the positive class of a river `predict_proba_one` answer."""
    if not probs:
        return None
    for label in (True, 1, "1", "true"):
        if label in probs:
            return float(probs[label])
    if len(probs) == 2:
        return float(probs[max(probs, key=str)])
    return float(max(probs.values()))


def artifact_bytes(artifact: Any, flavor: Flavor) -> bytes:
    """The stored bytes of an artifact given as bytes, an expression (rule) or a model object."""
    if flavor not in FLAVORS:
        raise DefinitionError(f"model flavor {flavor!r} is not known; use one of {', '.join(FLAVORS)}")
    if isinstance(artifact, bytes | bytearray):
        return bytes(artifact)
    if flavor == "rule":
        if not isinstance(artifact, str):
            raise DefinitionError("a rule model's artifact is an expression string, e.g. 'amount > 500'")
        parse(artifact)
        return artifact.encode()
    return pickle.dumps(artifact, protocol=pickle.HIGHEST_PROTOCOL)


def load_model(flavor: Flavor, data: bytes, *, features: Sequence[str] = ()) -> LoadedModel:
    """Build the predictor of checked artifact bytes; DefinitionError if it does not fit the flavor."""
    if flavor == "rule":
        try:
            return RuleModel(parse(data.decode()))
        except UnicodeDecodeError:
            raise DefinitionError("a rule model's artifact must be a UTF-8 expression") from None
    try:
        model = pickle.loads(data)  # only registry artifacts whose sha256 was checked
    except Exception as exc:
        raise DefinitionError(f"the {flavor} artifact cannot be unpickled: {type(exc).__name__}: {exc}") from None
    if flavor == "river":
        if not (hasattr(model, "predict_proba_one") or hasattr(model, "predict_one")):
            raise DefinitionError(f"{type(model).__name__} is not a river model (no predict_proba_one/predict_one)")
        return RiverModel(model)
    if not (hasattr(model, "predict_proba") or hasattr(model, "predict")):
        raise DefinitionError(f"{type(model).__name__} is not a scikit-learn style estimator (no predict)")
    if not features:
        raise DefinitionError("an sklearn model needs `features`: the column order of its input matrix")
    return SklearnModel(model, list(features))
