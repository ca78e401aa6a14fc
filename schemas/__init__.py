"""Event schemas: versioned contracts, validation, evolution rules and the system's own records.

The bottom layer: imports nothing from `feature_store`, `streams` or `serving`.
"""

from __future__ import annotations

from schemas.compat import check_compatible
from schemas.event_schema import BatchValidation, EventSchema
from schemas.fields import FIELD_TYPES, Field, FieldType
from schemas.records import LABELS, PREDICTION_LOG
from schemas.timestamps import now_ms, to_epoch_ms

__all__ = [
    "FIELD_TYPES",
    "LABELS",
    "PREDICTION_LOG",
    "BatchValidation",
    "EventSchema",
    "Field",
    "FieldType",
    "check_compatible",
    "now_ms",
    "to_epoch_ms",
]
