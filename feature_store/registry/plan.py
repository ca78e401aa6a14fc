"""Plans: what applying a repo would add, change and remove, and which changes break state.

A change is *breaking* when it changes what is stored: a view's `state_dict()`
(window, hop, function, transform, fields, entity, source key). A breaking
view change becomes a new view version with a new state fingerprint, hence
new online keys; the old keys and history stay as they were, and the new
version starts empty until `featurestream materialize` backfills it.
Everything else (descriptions, online/offline flags, ttl, staleness) is a
plain new version. A source's schema may only evolve as
`schemas.check_compatible` allows, judged against the features that read it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from feature_store.definitions import FeatureView, Source
from feature_store.durations import format_ms
from feature_store.errors import DefinitionError, SchemaError
from feature_store.repo import Definition, FeatureRepo
from feature_store.serialization import repo_from_dicts
from schemas import check_compatible

__all__ = ["KINDS", "Action", "Change", "FieldChange", "Kind", "Plan", "make_plan", "used_fields"]

Kind = Literal["entity", "source", "view", "service"]
KINDS: tuple[Kind, ...] = ("entity", "source", "view", "service")
Action = Literal["add", "change", "remove"]
_SYMBOL = {"add": "+", "change": "~", "remove": "-"}
_SOURCE_STATE_KEYS = ("kind", "key", "event_time", "partitions", "topic")
_READDED_VIEW = ("added again: online keys {} may still hold state from before its removal; "
                 "backfill it with `featurestream materialize`")


@dataclass(frozen=True, kw_only=True)
class FieldChange:
    """One changed field of a definition; `path` is dotted, list items by name (`aggregations[x].window`).

    `change` is "added" or "removed" when the field (or named list item) is
    new or gone, else "set"; the missing side is None.
    """

    path: str
    old: Any
    new: Any
    change: Literal["set", "added", "removed"] = "set"

    def __str__(self) -> str:
        leaf = self.path.rsplit(".", 1)[-1]
        if self.change == "added":
            return f"{self.path}: added {_short(self.new, leaf)}"
        if self.change == "removed":
            return f"{self.path}: removed (was {_short(self.old, leaf)})"
        return f"{self.path}: {_short(self.old, leaf)} -> {_short(self.new, leaf)}"


@dataclass(frozen=True, kw_only=True)
class Change:
    """One definition added, changed or removed by a plan, with the version it gets."""

    action: Action
    kind: Kind
    name: str
    old_version: int | None
    new_version: int
    definition: Mapping[str, Any] | None
    """The new `to_dict()`; None for a removal."""
    fingerprint: str | None
    state_fingerprint: str | None
    """Views only: the print in the view's online keys."""
    diff: tuple[FieldChange, ...] = ()
    breaking: bool = False
    reason: str = ""

    @property
    def symbol(self) -> str:
        """`+`, `~` or `-`, as the plan table shows it."""
        return _SYMBOL[self.action]


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The outcome of `Registry.plan` / `Registry.apply`: changes in kind order, then name order."""

    changes: tuple[Change, ...] = ()
    warnings: tuple[str, ...] = ()
    applied: bool = False

    @property
    def added(self) -> list[Change]:
        return [c for c in self.changes if c.action == "add"]

    @property
    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.action == "change"]

    @property
    def removed(self) -> list[Change]:
        return [c for c in self.changes if c.action == "remove"]

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking]

    @property
    def is_empty(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        """One line: `2 to add, 1 to change (1 breaking), 0 to remove`."""
        breaking = f" ({len(self.breaking)} breaking)" if self.breaking else ""
        return f"{len(self.added)} to add, {len(self.changed)} to change{breaking}, {len(self.removed)} to remove"

    def same_changes(self, other: Plan) -> bool:
        """True when both plans would write the same records (used to detect a registry that moved)."""
        key = [(c.action, c.kind, c.name, c.new_version, c.fingerprint, c.state_fingerprint) for c in self.changes]
        return key == [(c.action, c.kind, c.name, c.new_version, c.fingerprint, c.state_fingerprint)
                       for c in other.changes]


def make_plan(live: FeatureRepo, versions: Mapping[tuple[str, str], int], new: FeatureRepo) -> Plan:
    """Diff `new` against the `live` repo; `versions` holds the latest version of every (kind, name) ever stored.

    Raises DefinitionError or SchemaError (nothing to apply) when `new` is
    invalid, does not survive storage, or evolves a schema incompatibly.
    """
    new.validate()
    _check_round_trip(new)
    warnings = _check_schemas(live, new)
    changes: list[Change] = []
    for kind in KINDS:
        old_items, new_items = _group(live, kind), _group(new, kind)
        for name in sorted(set(old_items) | set(new_items)):
            old, item = old_items.get(name), new_items.get(name)
            previous = versions.get((kind, name), 0)
            if item is None:
                changes.append(Change(action="remove", kind=kind, name=name, old_version=previous,
                                      new_version=previous + 1, definition=None, fingerprint=None,
                                      state_fingerprint=None, reason=_removal_note(kind)))
                continue
            state = item.state_fingerprint if isinstance(item, FeatureView) else None
            if old is None:
                note = _READDED_VIEW.format(state) if kind == "view" and previous else ""
                changes.append(Change(action="add", kind=kind, name=name, old_version=previous or None,
                                      new_version=previous + 1, definition=item.to_dict(),
                                      fingerprint=item.fingerprint, state_fingerprint=state, reason=note))
                continue
            old_state = old.state_fingerprint if isinstance(old, FeatureView) else None
            if old.fingerprint == item.fingerprint and old_state == state:
                continue
            diff = diff_dicts(old.to_dict(), item.to_dict())
            if isinstance(old, FeatureView) and isinstance(item, FeatureView) and old_state != state:
                diff = diff or diff_dicts(old.state_dict(), item.state_dict(), prefix="state")
            breaking, reason = _judge(old, item, new)
            changes.append(Change(action="change", kind=kind, name=name, old_version=previous,
                                  new_version=previous + 1, definition=item.to_dict(),
                                  fingerprint=item.fingerprint, state_fingerprint=state, diff=tuple(diff),
                                  breaking=breaking, reason=reason))
    return Plan(changes=tuple(changes), warnings=tuple(warnings))


def used_fields(views: Iterable[FeatureView]) -> dict[str, list[str]]:
    """Source field -> the features ("view:feature") that read it, for `check_compatible`.

    A view's entity join key, its source's key and event time feed all its
    features; aggregation columns and latest-value fields feed their own
    feature; a transform output feeds the features that use it, and each
    source field named in its SQL text (a word match: an approximation) feeds
    those features too, or the whole view when no feature uses the output
    (the SQL must still run).
    """
    uses: dict[str, set[str]] = {}
    for view in views:
        every = [f"{view.name}:{feature}" for feature in view.feature_names]
        fed: dict[str, list[str]] = {}
        for agg in view.aggregations:
            if agg.column != "*":
                fed.setdefault(agg.column, []).append(f"{view.name}:{agg.name}")
        for name in view.fields:
            fed.setdefault(name, []).append(f"{view.name}:{name}")
        for column in (view.entity.join_key, view.source.key, view.source.event_time):
            fed.setdefault(column, []).extend(every)
        for output, expression in view.transform.items():
            readers = fed.get(output) or every
            for column in view.source.schema.columns:
                if re.search(rf"(?<![A-Za-z0-9_]){re.escape(column)}(?![A-Za-z0-9_])", expression):
                    fed.setdefault(column, []).extend(readers)
        for column, features in fed.items():
            if column in view.source.schema.columns:
                uses.setdefault(column, set()).update(features)
    return {column: sorted(features) for column, features in sorted(uses.items())}


def diff_dicts(old: Mapping[str, Any], new: Mapping[str, Any], *, prefix: str = "") -> list[FieldChange]:
    """Changed leaves of two `to_dict()` outputs; lists of named objects are matched by name."""
    changes: list[FieldChange] = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}.{key}" if prefix else str(key)
        changes.extend(_diff_value(old.get(key, _MISSING), new.get(key, _MISSING), path))
    return changes


_MISSING: Any = object()


def _diff_value(old: Any, new: Any, path: str) -> list[FieldChange]:
    if old is _MISSING:
        return [FieldChange(path=path, old=None, new=new, change="added")]
    if new is _MISSING:
        return [FieldChange(path=path, old=old, new=None, change="removed")]
    if old == new:
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return diff_dicts(old, new, prefix=path)
    if _named_list(old) and _named_list(new):
        old_by, new_by = {i["name"]: i for i in old}, {i["name"]: i for i in new}
        changes: list[FieldChange] = []
        for name in [*old_by, *(n for n in new_by if n not in old_by)]:
            changes.extend(_diff_value(old_by.get(name, _MISSING), new_by.get(name, _MISSING), f"{path}[{name}]"))
        if not changes:  # same items, new order
            changes.append(FieldChange(path=f"{path} order", old=list(old_by), new=list(new_by)))
        return changes
    return [FieldChange(path=path, old=old, new=new)]


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, Mapping) and "name" in i for i in value)


def _group(repo: FeatureRepo, kind: Kind) -> Mapping[str, Definition]:
    groups: dict[str, Mapping[str, Any]] = {"entity": repo.entities, "source": repo.sources, "view": repo.views,
                                            "service": repo.services}
    return groups[kind]


def _check_round_trip(repo: FeatureRepo) -> None:
    """Every definition must come back from storage with the same fingerprints, or we refuse to store it."""
    items: list[Definition] = [*repo.entities.values(), *repo.sources.values(), *repo.views.values(),
                               *repo.services.values()]
    rebuilt = repo_from_dicts([item.to_dict() for item in items])
    for kind in KINDS:
        for name, item in _group(repo, kind).items():
            again = _group(rebuilt, kind)[name]
            same_state = not isinstance(item, FeatureView) or (
                isinstance(again, FeatureView) and again.state_fingerprint == item.state_fingerprint)
            if again.fingerprint != item.fingerprint or not same_state:
                raise DefinitionError(
                    f"{type(item).__name__} {name!r} does not survive storage (its to_dict() rebuilds into a "
                    f"different definition); this is a featurestream bug, please report it"
                )


def _check_schemas(live: FeatureRepo, new: FeatureRepo) -> list[str]:
    """Run `check_compatible` for every source whose schema changes; SchemaError names the features.

    A field counts as used when a live view or a view of the new repo reads
    it: to drop a field, first apply the views without it, then the schema.
    A source that was removed and comes back is not compared with its past.
    """
    warnings: list[str] = []
    for name, source in sorted(new.sources.items()):
        old = live.sources.get(name)
        if old is None or old.schema.fingerprint == source.schema.fingerprint:
            continue
        readers = [*_views_of(live, old), *_views_of(new, source)]
        try:
            found = check_compatible(old.schema, source.schema, used_fields=used_fields(readers))
        except SchemaError as exc:
            raise SchemaError(f"source {name!r}: {exc}", errors=exc.errors) from None
        warnings.extend(f"source {name!r}: {warning}" for warning in found)
    return warnings


def _views_of(repo: FeatureRepo, source: Source) -> list[FeatureView]:
    return [view for view in repo.views.values() if view.source.name == source.name]


def _judge(old: Definition, new: Definition, repo: FeatureRepo) -> tuple[bool, str]:
    """(breaking, reason) of a change from `old` to `new` of the same kind and name."""
    if isinstance(old, FeatureView) and isinstance(new, FeatureView):
        if old.state_fingerprint == new.state_fingerprint:
            return False, ""
        before, after = old.state_dict(), new.state_dict()
        changed = ", ".join(k for k in after if before.get(k) != after.get(k))
        return True, (
            f"stored state changes ({changed}): new online keys {old.state_fingerprint} -> {new.state_fingerprint}; "
            f"the new version starts empty, backfill it with `featurestream materialize`"
        )
    old_dict, new_dict = old.to_dict(), new.to_dict()
    if old_dict["kind"] == "entity":
        keys = [k for k in ("join_key", "dtype") if old_dict[k] != new_dict[k]]
        readers = sorted(v.name for v in repo.views.values() if v.entity.name == new.name)
    elif old_dict["kind"] in ("stream_source", "batch_source"):
        keys = [k for k in _SOURCE_STATE_KEYS if old_dict.get(k) != new_dict.get(k)]
        readers = sorted(v.name for v in repo.views.values() if v.source.name == new.name)
    else:
        return False, ""
    if not keys:
        return False, ""
    views = f"views {', '.join(readers)} read it" if readers else "no view reads it"
    return True, (
        f"{', '.join(keys)} changes how events are keyed and placed ({views}); "
        f"re-materialize them with `featurestream materialize`"
    )


def _removal_note(kind: Kind) -> str:
    if kind == "view":
        return "no longer computed or served; its stored online state is left in place"
    return ""


def _short(value: Any, leaf: str = "", limit: int = 80) -> str:
    """A value as a plan shows it: durations as '5m', objects as `k=v` pairs without empty values."""
    if leaf in _DURATIONS and isinstance(value, int) and not isinstance(value, bool):
        text = format_ms(value)
    elif isinstance(value, Mapping):
        text = " ".join(f"{k}={v!r}" for k, v in value.items() if k != "name" and v not in ("", None, [], {}))
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_DURATIONS = frozenset({"window", "hop", "ttl", "allowed_lateness", "future_tolerance", "max_age"})
