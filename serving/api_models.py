"""Request and response bodies of the HTTP API (pydantic, so OpenAPI documents them)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "FeatureValueOut",
    "FeaturesRequest",
    "FeaturesResponse",
    "PredictRequest",
    "PredictResponse",
    "PromoteRequest",
    "PushRequest",
    "RegisterRequest",
    "RollbackRequest",
]

EntityKey = str | int
Scalar = str | int | float | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeaturesRequest(_Strict):
    """Name a feature service or list 'view:feature' refs, plus the entities to read."""

    service: str | None = Field(default=None, description="Feature service name, e.g. 'fraud_detection'.")
    features: list[str] | None = Field(default=None, description="'view:feature' refs (instead of a service).")
    entities: list[dict[str, EntityKey]] = Field(min_length=1, description="Join key -> entity key, per entity.")
    request: dict[str, Scalar] | list[dict[str, Scalar]] | None = Field(
        default=None, description="Request fields of the service: one object shared by all entities, or one each.")

    @model_validator(mode="after")
    def _one_selection(self) -> FeaturesRequest:
        if (self.service is None) == (self.features is None):
            raise ValueError("give exactly one of 'service' or 'features'")
        return self


ServedStatus = Literal["present", "default", "stale", "missing"]
SERVED_STATUSES: tuple[str, ...] = get_args(ServedStatus)
"""A served value's statuses, in the order the dashboard lists them."""


class FeatureValueOut(BaseModel):
    value: Any = None
    status: ServedStatus
    age_ms: int | None = Field(default=None, description="Read time minus the newest event time behind the value.")


class EntityFeatures(BaseModel):
    entity: dict[str, EntityKey]
    features: dict[str, FeatureValueOut]


class FeaturesResponse(BaseModel):
    read_at: int = Field(description="Read time, epoch ms (UTC).")
    results: list[EntityFeatures]


class PredictRequest(_Strict):
    entities: list[dict[str, EntityKey]] = Field(min_length=1)
    request: dict[str, Scalar] | list[dict[str, Scalar]] | None = None


class Prediction(BaseModel):
    request_id: str
    entity: dict[str, EntityKey]
    prediction: float | None
    model_version: int
    fallback: bool = Field(description="True when the declared fallback answered instead of the model.")
    reason: str | None = Field(default=None, description="Why the fallback answered (or why there is no answer).")
    features: dict[str, Any]


class PredictResponse(BaseModel):
    model: str
    model_version: int
    predictions: list[Prediction]


class PushRequest(_Strict):
    events: list[dict[str, Any]] = Field(min_length=1)


class RegisterRequest(_Strict):
    flavor: Literal["river", "sklearn", "rule"]
    expression: str | None = Field(default=None, description="The rule (flavor 'rule').")
    artifact_b64: str | None = Field(default=None, description="Base64 pickle (flavors river, sklearn; admin key).")
    feature_service: str | None = None
    features: list[str] = Field(default_factory=list, description="Input column order (sklearn).")
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    training_set_ref: str | None = None
    data_range: tuple[int, int] | None = None
    fallback: str | None = Field(default=None, description="A rule expression, or 'model@version'.")
    description: str = ""

    @model_validator(mode="after")
    def _artifact(self) -> RegisterRequest:
        if self.flavor == "rule" and self.expression is None:
            raise ValueError("a rule model needs 'expression'")
        if self.flavor != "rule" and self.artifact_b64 is None:
            raise ValueError(f"a {self.flavor} model needs 'artifact_b64' (base64 of the pickled model)")
        return self


class PromoteRequest(_Strict):
    stage: Literal["staging", "production", "archived"]
    reason: str = ""


class RollbackRequest(_Strict):
    reason: str = ""
