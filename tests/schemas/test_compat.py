from __future__ import annotations

from typing import Any

import pytest

from schemas import EventSchema, Field, check_compatible
from schemas.errors import SchemaError

V1_FIELDS = {
    "user_id": Field("string"),
    "amount": Field("float"),
    "country": Field("string", required=False),
    "channel": Field("string", required=False),
}
V1 = EventSchema(name="transactions", version=1, fields=V1_FIELDS)
USES = {"amount": ["txn_stats:amount_sum_1h", "txn_stats:amount_mean_1d", "risk:max_amount_7d"]}
MIGRATE = "keep the field, or publish a new source/topic and migrate the views: "


def v2(**changes: Any) -> EventSchema:
    fields = {**V1_FIELDS, **changes}
    return EventSchema(name="transactions", version=2, fields={k: v for k, v in fields.items() if v is not None})


def refusal(new: EventSchema, used: dict[str, list[str]] = USES) -> list[str]:
    with pytest.raises(SchemaError) as info:
        check_compatible(V1, new, used_fields=used)
    return info.value.errors


def test_same_version_same_content_is_a_no_op() -> None:
    same = EventSchema(name="transactions", version=1, fields=dict(V1_FIELDS))
    assert check_compatible(V1, same, used_fields=USES) == []


def test_same_version_changed_content_needs_a_bump() -> None:
    changed = EventSchema(name="transactions", version=1, fields=V1_FIELDS | {"x": Field("int", required=False)})
    with pytest.raises(SchemaError, match="keeps its version; publish the change as transactions v2"):
        check_compatible(V1, changed)


@pytest.mark.parametrize("version", [3, 7])
def test_versions_go_up_by_one(version: int) -> None:
    new = EventSchema(name="transactions", version=version, fields=V1_FIELDS)
    with pytest.raises(SchemaError, match="versions go up one at a time; publish the change as transactions v2"):
        check_compatible(V1, new)


def test_downgrade_is_refused() -> None:
    with pytest.raises(SchemaError, match="versions go up one at a time"):
        check_compatible(v2(), V1)


def test_other_schema_name_is_refused() -> None:
    other = EventSchema(name="payments", version=2, fields=V1_FIELDS)
    with pytest.raises(SchemaError, match="different schemas"):
        check_compatible(V1, other)


def test_adding_an_optional_field_is_allowed_silently() -> None:
    assert check_compatible(V1, v2(device=Field("string", required=False)), used_fields=USES) == []


def test_description_only_change_is_allowed() -> None:
    new = v2(amount=Field("float", description="in EUR"))
    assert check_compatible(V1, new, used_fields=USES) == []


def test_adding_a_required_field_is_refused() -> None:
    assert refusal(v2(device=Field("string"))) == [
        "device: added as a required field, which breaks producers that do not send it yet; "
        "add it with required=False"
    ]


def test_removing_a_used_field_names_features_and_views() -> None:
    assert refusal(v2(amount=None)) == [
        "amount: removed (was float), but features use it: risk:max_amount_7d, txn_stats:amount_mean_1d, "
        f"txn_stats:amount_sum_1h; {MIGRATE}risk, txn_stats"
    ]


def test_refusal_message_names_features() -> None:
    with pytest.raises(SchemaError, match=r"not compatible with transactions v1: amount: removed .*risk:max_amount_7d"):
        check_compatible(V1, v2(amount=None), used_fields=USES)


def test_retyping_a_used_field_is_refused() -> None:
    (line,) = refusal(v2(amount=Field("int")))
    assert line.startswith("amount: type changes from float to int, but features use it: risk:max_amount_7d")
    assert line.endswith(f"{MIGRATE}risk, txn_stats")


def test_making_a_used_field_required_is_refused() -> None:
    used = {"country": ["geo:country_last"]}
    assert refusal(v2(country=Field("string")), used) == [
        f"country: becomes required and no longer accepts null, but features use it: geo:country_last; {MIGRATE}geo"
    ]


def test_making_a_used_field_not_nullable_is_refused() -> None:
    old = EventSchema(name="transactions", version=1, fields={"amount": Field("float", nullable=True)})
    new = EventSchema(name="transactions", version=2, fields={"amount": Field("float")})
    with pytest.raises(SchemaError) as info:
        check_compatible(old, new, used_fields=USES)
    (line,) = info.value.errors
    assert line.startswith("amount: no longer accepts null, but features use it: ")


def test_changes_to_unused_fields_are_warnings() -> None:
    new = v2(country=None, channel=Field("int", required=False))
    assert check_compatible(V1, new, used_fields=USES) == [
        "channel: type changes from string to int; no feature uses it, but producers must follow transactions v2",
        "country: removed (was string); no feature uses it, but producers must follow transactions v2",
    ]


def test_loosening_a_used_field_warns_its_readers() -> None:
    warnings = check_compatible(V1, v2(amount=Field("float", nullable=True)), used_fields=USES)
    assert warnings == [
        "amount: now accepts null; features reading it may see nulls: risk:max_amount_7d, "
        "txn_stats:amount_mean_1d, txn_stats:amount_sum_1h"
    ]


def test_every_refusal_is_listed() -> None:
    errors = refusal(v2(amount=None, user_id=Field("int"), device=Field("string")),
                     USES | {"user_id": ["txn_stats:amount_sum_1h"]})
    assert [line.split(":", 1)[0] for line in errors] == ["user_id", "device", "amount"]


def test_used_fields_defaults_to_nothing_used() -> None:
    assert check_compatible(V1, v2(amount=None)) == [
        "amount: removed (was float); no feature uses it, but producers must follow transactions v2"
    ]


def test_adding_a_require_any_group() -> None:
    new = EventSchema(name="transactions", version=2, fields=V1_FIELDS, require_any=[("country", "channel")])
    assert check_compatible(V1, new)[0].startswith("country, channel: added a rule that one of them must be set")
    with pytest.raises(SchemaError, match=r"country, channel: added a rule .* features use it: geo:country_last"):
        check_compatible(V1, new, used_fields={"country": ["geo:country_last"]})
    back = EventSchema(name="transactions", version=3, fields=V1_FIELDS)
    assert check_compatible(new, back) == ["country, channel: events no longer need one of them set"]
