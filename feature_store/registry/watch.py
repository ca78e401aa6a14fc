"""Follow `featurestream apply` from a long-running process: notice a new apply, load what it made live.

Why: the API and the stream workers run for weeks; without this they would
keep the definitions they started with until someone restarted them, so a
feature service added by `apply` answered 404 and a model registered on it
could not be served. An apply bumps the registry's generation (one indexed
SQLite read to poll), so a process polls every few seconds and loads the
definitions only when it changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from feature_store.registry.store import Registry, load_live_repo
from feature_store.repo import FeatureRepo

if TYPE_CHECKING:
    from feature_store.settings import Settings

__all__ = ["DefinitionsWatch"]


class DefinitionsWatch:
    """The live definitions of one process, and whether an apply replaced them since it last looked.

    Blocking (SQLite reads): call from a thread in async code.
    """

    def __init__(self, settings: Settings, repo_path: Path | None = None) -> None:
        self._settings = settings
        self._repo_path = repo_path
        self._registry: Registry | None = None
        self._seen = self._generation()  # before the first load: an apply in between is noticed next time

    def load(self) -> FeatureRepo:
        """The live definitions now (the registry's, else the repo file): `load_live_repo`."""
        return load_live_repo(self._settings, self._repo_path)

    def changed(self) -> FeatureRepo | None:
        """The live definitions if an apply happened since the last call (or since this watch began), else None.

        A load that fails raises (its caller keeps what it serves); the apply
        counts as seen either way, so a bad apply is reported once, not at every poll.
        """
        generation = self._generation()
        if generation == self._seen:
            return None
        self._seen = generation
        return self.load()

    def _generation(self) -> int:
        """The registry's apply count; 0 while no registry file exists (this never creates one)."""
        if self._registry is None:
            if not self._settings.registry.exists():
                return 0
            self._registry = Registry(self._settings.registry)
        return self._registry.generation()
