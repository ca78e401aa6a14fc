"""Loaded models by version, and which version is in production (re-checked every `ttl_s`).

Loading re-hashes the artifact (the registry refuses a tampered one), so it
happens once per version; the production pointer is re-read from the
registry at most every `ttl_s`, so a promotion by another process (the
online learner, the CLI) is picked up within that time, and at once when
made through this app.
"""

from __future__ import annotations

import time

from feature_store.models import LoadedModel, ModelRegistry, ModelVersion

__all__ = ["ModelCache"]


class ModelCache:
    def __init__(self, registry: ModelRegistry, *, ttl_s: float = 1.0) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self._production: dict[str, tuple[float, ModelVersion]] = {}
        self._versions: dict[tuple[str, int], ModelVersion] = {}
        self._loaded: dict[tuple[str, int], LoadedModel] = {}

    def version(self, name: str, version: int | None = None) -> ModelVersion:
        """The pinned version, or the production one; UnknownFeatureError (404) when there is none."""
        if version is not None:
            key = (name, version)
            found = self._versions.get(key)
            if found is None:
                found = self._versions[key] = self.registry.get(name, version)
            return found
        now = time.monotonic()
        cached = self._production.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        current = self.registry.get(name)
        self._production[name] = (now + self.ttl_s, current)
        return current

    def model(self, version: ModelVersion) -> LoadedModel:
        key = (version.name, version.version)
        loaded = self._loaded.get(key)
        if loaded is None:
            loaded = self._loaded[key] = self.registry.load(version)
        return loaded

    def invalidate(self, name: str) -> None:
        """Forget the production pointer and stages of `name` (after promote/rollback here)."""
        self._production.pop(name, None)
        for key in [k for k in self._versions if k[0] == name]:
            del self._versions[key]
