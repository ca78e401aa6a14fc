"""The registry: applied, versioned feature definitions shared by every process.

`Registry(path)` stores every applied version in SQLite; `plan`/`apply` diff a
repo against the live definitions; `load_live_repo` is what long-running
processes call at start, and `DefinitionsWatch` tells them when an apply
replaced those definitions.
"""

from __future__ import annotations

from feature_store.registry.plan import KINDS, Change, FieldChange, Kind, Plan, used_fields
from feature_store.registry.store import Registry, VersionRecord, load_live_repo
from feature_store.registry.watch import DefinitionsWatch

__all__ = ["KINDS", "Change", "DefinitionsWatch", "FieldChange", "Kind", "Plan", "Registry", "VersionRecord",
           "load_live_repo", "used_fields"]
