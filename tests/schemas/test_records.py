from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas import LABELS, PREDICTION_LOG
from schemas.errors import SchemaError

PREDICTION: dict[str, Any] = {
    "request_id": "r-1",
    "model": "fraud",
    "model_version": 3,
    "served_at": "2024-05-01T12:00:00Z",
    "entity_keys": orjson.dumps({"user": "u1"}).decode(),
    "features": orjson.dumps({"txn_stats:amount_sum_1h": 12.5}).decode(),
    "prediction": 0.25,
    "fallback": False,
    "service": "fraud_v1",
}
NO_KEY = (
    "request_id, entity_key: labels v1 needs at least one of these set, but all are missing or null; "
    "send request_id or entity_key"
)


def test_prediction_log_v1_fields() -> None:
    assert (PREDICTION_LOG.name, PREDICTION_LOG.version) == ("prediction_log", 1)
    assert PREDICTION_LOG.columns == {
        "request_id": "string", "model": "string", "model_version": "int", "served_at": "timestamp",
        "entity_keys": "string", "features": "string", "prediction": "float", "fallback": "bool",
        "service": "string",
    }
    assert all(field.required and not field.nullable for _, field in PREDICTION_LOG.fields)


def test_prediction_log_validates() -> None:
    out = PREDICTION_LOG.validate(PREDICTION)
    assert out["served_at"] == 1_714_564_800_000
    with pytest.raises(SchemaError) as info:
        PREDICTION_LOG.validate(PREDICTION | {"fallback": "no", "model_version": "3"})
    assert info.value.errors == [
        "model_version: expected int, got string '3'",
        "fallback: expected bool, got string 'no'",
    ]


def test_labels_v1_fields() -> None:
    assert (LABELS.name, LABELS.version) == ("labels", 1)
    assert LABELS.columns == {"request_id": "string", "entity_key": "string", "event_time": "timestamp",
                              "label": "float", "model": "string"}
    for name in ("request_id", "entity_key", "model"):
        assert not LABELS.field(name).required
        assert LABELS.field(name).nullable


@pytest.mark.parametrize(
    "keys", [{"request_id": "r-1"}, {"entity_key": "u1"}, {"request_id": "r-1", "entity_key": None}],
)
def test_label_keyed_by_request_or_entity(keys: dict[str, Any]) -> None:
    out = LABELS.validate({"event_time": 5, "label": 1} | keys)
    assert out["label"] == 1.0
    assert out["model"] is None


@pytest.mark.parametrize("keys", [{}, {"request_id": None, "entity_key": None}, {"request_id": None}])
def test_label_without_any_key_is_refused(keys: dict[str, Any]) -> None:
    with pytest.raises(SchemaError) as info:
        LABELS.validate({"event_time": 5, "label": 1.0} | keys)
    assert info.value.errors == [NO_KEY]


def test_label_key_rule_is_listed_with_other_errors() -> None:
    with pytest.raises(SchemaError) as info:
        LABELS.validate({"event_time": "2024-01-01T00:00:00", "label": "x"})
    assert info.value.errors == [
        "event_time: time '2024-01-01T00:00:00' has no timezone; add one like +00:00 or Z",
        "label: expected float, got string 'x'",
        NO_KEY,
    ]


def test_mistyped_key_is_reported_once_not_as_missing() -> None:
    with pytest.raises(SchemaError) as info:
        LABELS.validate({"event_time": 5, "label": 1.0, "request_id": 7})
    assert info.value.errors == ["request_id: expected string, got int 7"]


def test_label_rule_in_batches() -> None:
    result = LABELS.validate_batch(
        [b'{"event_time": 5, "label": 1}', b'{"event_time": 5, "label": 1, "entity_key": "u"}']
    )
    assert result.invalid == [(0, NO_KEY)]
    assert result.valid_index == [1]


def test_label_rule_is_in_the_json_schema() -> None:
    assert LABELS.to_json_schema()["allOf"][0]["anyOf"][0] == {
        "required": ["request_id"], "properties": {"request_id": {"not": {"type": "null"}}},
    }
