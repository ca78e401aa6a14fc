"""The wire records featurestream itself writes: the prediction log and labels.

Serving appends one `PREDICTION_LOG` event per answered prediction; label
producers send `LABELS`, which the online learner joins to predictions by
`request_id`, or by `entity_key` and `event_time` when no request id exists.
"""

from __future__ import annotations

from schemas.event_schema import EventSchema
from schemas.fields import Field

__all__ = ["LABELS", "PREDICTION_LOG"]

PREDICTION_LOG = EventSchema(
    name="prediction_log",
    version=1,
    description="One served prediction, with the exact features the model saw.",
    fields={
        "request_id": Field("string", description="Unique id of the prediction request; labels join on it."),
        "model": Field("string", description="Registered model name."),
        "model_version": Field("int", description="Registered model version that answered."),
        "served_at": Field("timestamp", description="When the prediction was answered (epoch ms, UTC)."),
        "entity_keys": Field("string", description="JSON-encoded object: entity name -> key."),
        "features": Field("string", description="JSON-encoded object: feature name -> value given to the model."),
        "prediction": Field("float", description="The model output."),
        "fallback": Field("bool", description="True when a fallback answered instead of the model."),
        "service": Field("string", description="Feature service whose vector fed the model."),
    },
)

LABELS = EventSchema(
    name="labels",
    version=1,
    description="A ground-truth outcome, keyed by request_id or by entity_key + event_time.",
    fields={
        "request_id": Field("string", required=False, nullable=True,
                            description="The prediction request this label answers, when known."),
        "entity_key": Field("string", required=False, nullable=True,
                            description="The entity the label is about, when no request id is known."),
        "event_time": Field("timestamp", description="When the outcome happened (epoch ms, UTC)."),
        "label": Field("float", description="The observed outcome."),
        "model": Field("string", required=False, nullable=True,
                       description="Restrict the label to one model; null for all."),
    },
    require_any=[("request_id", "entity_key")],
)
