"""A feature repo: the definitions declared in a Python file, checked as a whole.

`load_repo(path)` imports the file (or `features.py` in a directory) and
collects every module-level definition; `FeatureRepo` checks what single
definitions cannot: unique names and references between them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feature_store.definitions import BatchSource, Entity, FeatureService, FeatureView, Source, StreamSource
from feature_store.errors import DefinitionError, UnknownFeatureError

__all__ = ["FeatureRepo", "load_repo"]

Definition = Entity | StreamSource | BatchSource | FeatureView | FeatureService


@dataclass(frozen=True)
class FeatureRepo:
    """Every definition of one repo, by kind and name."""

    entities: Mapping[str, Entity] = field(default_factory=dict)
    sources: Mapping[str, Source] = field(default_factory=dict)
    views: Mapping[str, FeatureView] = field(default_factory=dict)
    services: Mapping[str, FeatureService] = field(default_factory=dict)

    @classmethod
    def from_definitions(cls, definitions: Iterable[Definition]) -> FeatureRepo:
        """Group definitions by kind; views bring their entity and source along."""
        entities: dict[str, Entity] = {}
        sources: dict[str, Source] = {}
        views: dict[str, FeatureView] = {}
        services: dict[str, FeatureService] = {}
        items = list(definitions)
        for item in items:
            if isinstance(item, FeatureView):
                items.extend([item.entity, item.source])
        buckets: dict[type, dict[str, Any]] = {Entity: entities, StreamSource: sources, BatchSource: sources,
                                               FeatureView: views, FeatureService: services}
        for item in items:
            target = buckets.get(type(item))
            if target is None:  # not a definition (callers may pass whatever a module holds)
                continue
            existing = target.get(item.name)
            if existing is not None and existing != item:
                raise DefinitionError(
                    f"two different {type(item).__name__} definitions are named {item.name!r}; rename one"
                )
            target[item.name] = item
        repo = cls(entities=entities, sources=sources, views=views, services=services)
        repo.validate()
        return repo

    def validate(self) -> None:
        """Cross-definition checks: names unique across kinds, service references resolve."""
        seen: dict[str, str] = {}
        for kind, names in (("Entity", self.entities), ("Source", self.sources), ("FeatureView", self.views),
                            ("FeatureService", self.services)):
            for name in names:
                if name in seen:
                    raise DefinitionError(f"{kind} {name!r} has the same name as a {seen[name]}; names must be unique")
                seen[name] = kind
        topics: dict[str, str] = {}
        for source in self.sources.values():
            if isinstance(source, StreamSource):
                if source.topic in topics:
                    raise DefinitionError(
                        f"StreamSource {source.name!r} and {topics[source.topic]!r} read the same topic "
                        f"{source.topic!r}; give each source its own topic"
                    )
                topics[source.topic] = source.name
        for service in self.services.values():
            for ref in service.feature_refs:
                self.resolve(ref, context=f"FeatureService {service.name!r}")

    def resolve(self, ref: str, *, context: str = "") -> tuple[FeatureView, str]:
        """The view and feature name of a 'view:feature' reference."""
        view_name, _, feature = ref.partition(":")
        where = f"{context}: " if context else ""
        view = self.views.get(view_name)
        if view is None:
            raise UnknownFeatureError(
                f"{where}unknown feature view {view_name!r} in {ref!r} (views: {', '.join(sorted(self.views))})"
            )
        if feature not in view.feature_names:
            raise UnknownFeatureError(
                f"{where}view {view_name!r} has no feature {feature!r} (features: {', '.join(view.feature_names)})"
            )
        return view, feature

    def view(self, name: str) -> FeatureView:
        try:
            return self.views[name]
        except KeyError:
            raise UnknownFeatureError(
                f"unknown feature view {name!r} (views: {', '.join(sorted(self.views))})"
            ) from None

    def service(self, name: str) -> FeatureService:
        try:
            return self.services[name]
        except KeyError:
            raise UnknownFeatureError(
                f"unknown feature service {name!r} (services: {', '.join(sorted(self.services))})"
            ) from None

    def source(self, name: str) -> Source:
        try:
            return self.sources[name]
        except KeyError:
            raise UnknownFeatureError(
                f"unknown source {name!r} (sources: {', '.join(sorted(self.sources))})"
            ) from None

    def views_of(self, source: Source) -> list[FeatureView]:
        """The views fed by `source`, in name order."""
        return [v for _, v in sorted(self.views.items()) if v.source.name == source.name]

    def group_features(self, refs: Iterable[str]) -> dict[FeatureView, list[str]]:
        """'view:feature' references grouped by view, in first-seen order."""
        grouped: dict[FeatureView, list[str]] = {}
        for ref in refs:
            view, feature = self.resolve(ref)
            grouped.setdefault(view, []).append(feature)
        return grouped


def load_repo(path: str | Path) -> FeatureRepo:
    """Import a feature repo file (or `<dir>/features.py`) and collect its definitions."""
    path = Path(path)
    file = path / "features.py" if path.is_dir() else path
    if not file.is_file():
        raise DefinitionError(f"no feature repo at {str(path)!r}; pass a .py file or a folder with features.py")
    module_name = f"_featurestream_repo_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"cannot import feature repo {str(file)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except DefinitionError:
        raise
    except Exception as exc:  # a user's file: report its error as one line
        raise DefinitionError(f"feature repo {str(file)!r} failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(module_name, None)
    definitions = [v for v in vars(module).values() if isinstance(v, Entity | StreamSource | BatchSource |
                                                                   FeatureView | FeatureService)]
    return FeatureRepo.from_definitions(definitions)
