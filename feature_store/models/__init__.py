"""The model registry: versioned, hash-checked model artifacts with stages and lineage.

Serving loads production versions from it; the stream worker's online
learner registers new versions into it.
"""

from __future__ import annotations

from feature_store.models.flavors import FLAVORS, Flavor, LoadedModel, load_model
from feature_store.models.registry import STAGES, AuditEntry, ModelRegistry, ModelVersion, Stage

__all__ = [
    "FLAVORS",
    "STAGES",
    "AuditEntry",
    "Flavor",
    "LoadedModel",
    "ModelRegistry",
    "ModelVersion",
    "Stage",
    "load_model",
]
