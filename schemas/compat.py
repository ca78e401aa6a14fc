"""Schema evolution: which changes a new version may make without breaking anyone.

Producers break when the schema starts demanding what they do not send;
feature views break when a field they read disappears or changes meaning.
A change that would break a view is refused with the features named; the
same change to a field no feature reads is allowed and reported as a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from schemas.errors import SchemaError
from schemas.event_schema import EventSchema
from schemas.fields import Field

__all__ = ["check_compatible"]

_NO_USES: Mapping[str, Sequence[str]] = MappingProxyType({})


def check_compatible(
    old: EventSchema, new: EventSchema, *, used_fields: Mapping[str, Sequence[str]] = _NO_USES,
) -> list[str]:
    """Check that `new` may replace `old`; return warnings, raise `SchemaError` listing refusals.

    `used_fields` maps a field name to the features ("view:feature") that
    read it. Rules: `new.version` is `old.version + 1` (the same version is
    accepted only with identical content, as a no-op); adding an optional
    field is fine; adding a required field is refused; removing, retyping or
    tightening (optional -> required, nullable -> not nullable) a field, or
    adding a `require_any` group over it, is refused when a feature uses it
    and a warning otherwise; loosening a used field is a warning too.
    """
    if old.name != new.name:
        raise SchemaError(
            f"cannot evolve {old.label} into {new.label}: different schemas; publish {new.name!r} as a new source"
        )
    if new.version == old.version:
        if new.fingerprint == old.fingerprint:
            return []
        raise SchemaError(
            f"{new.label} differs from the published {old.label} but keeps its version; "
            f"publish the change as {new.name} v{old.version + 1}"
        )
    if new.version != old.version + 1:
        raise SchemaError(
            f"cannot evolve {old.label} into {new.label}: versions go up one at a time; "
            f"publish the change as {new.name} v{old.version + 1}"
        )
    old_fields, new_fields = dict(old.fields), dict(new.fields)
    refusals: list[str] = []
    warnings: list[str] = []

    def judge(names: Sequence[str], change: str) -> None:
        users = sorted({user for name in names for user in used_fields.get(name, ())})
        subject = ", ".join(names)
        if not users:
            warnings.append(f"{subject}: {change}; no feature uses it, but producers must follow {new.label}")
            return
        views = sorted({user.split(":", 1)[0] for user in users})
        refusals.append(
            f"{subject}: {change}, but features use it: {', '.join(users)}; keep the field, or publish a new "
            f"source/topic and migrate the views: {', '.join(views)}"
        )

    for name, field in new_fields.items():
        before = old_fields.get(name)
        if before is None:
            if field.required:
                refusals.append(
                    f"{name}: added as a required field, which breaks producers that do not send it yet; "
                    "add it with required=False"
                )
            continue
        changes = _tightenings(before, field)
        if changes:
            judge([name], " and ".join(changes))
        elif field.accepts_null and not before.accepts_null and used_fields.get(name):
            warnings.append(
                f"{name}: now accepts null; features reading it may see nulls: {', '.join(sorted(used_fields[name]))}"
            )
    for name, field in old_fields.items():
        if name not in new_fields:
            judge([name], f"removed (was {field.type})")
    for group in sorted(set(new.require_any) - set(old.require_any)):
        judge(group, "added a rule that one of them must be set")
    for group in sorted(set(old.require_any) - set(new.require_any)):
        warnings.append(f"{', '.join(group)}: events no longer need one of them set")
    if refusals:
        raise SchemaError(f"{new.label} is not compatible with {old.label}: {'; '.join(refusals)}",
                          errors=refusals)
    return warnings


def _tightenings(before: Field, after: Field) -> list[str]:
    """What `after` changes about a field's meaning or demands more of producers than `before`."""
    changes = []
    if before.type != after.type:
        changes.append(f"type changes from {before.type} to {after.type}")
    if after.required and not before.required:
        changes.append("becomes required")
    if before.accepts_null and not after.accepts_null:
        changes.append("no longer accepts null")
    return changes
