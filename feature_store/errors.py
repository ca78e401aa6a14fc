"""The exception hierarchy: one root, one subclass per failure.

No web framework is imported here; `serving` maps these to HTTP in one place.
"""

from __future__ import annotations

from schemas.errors import FeatureStoreError, SchemaError

__all__ = [
    "ApprovalError",
    "BrokerUnavailable",
    "ConfigError",
    "DefinitionError",
    "FeatureStoreError",
    "ModelIntegrityError",
    "OfflineStoreError",
    "OnlineStoreUnavailable",
    "RegistryError",
    "SchemaError",
    "ServiceStartError",
    "UnknownFeatureError",
]


class ConfigError(FeatureStoreError, ValueError):
    """Settings are missing or inconsistent; the message names the env var."""


class DefinitionError(FeatureStoreError, ValueError):
    """A feature definition is invalid; the message names the object and the fix."""


class UnknownFeatureError(FeatureStoreError, KeyError):
    """A view, feature, service, source or model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RegistryError(FeatureStoreError):
    """The registry cannot be read or written (corrupt file, conflicting apply)."""


class ModelIntegrityError(RegistryError):
    """A model artifact does not match the sha256 recorded at registration; it is never loaded."""


class OnlineStoreUnavailable(FeatureStoreError, ConnectionError):
    """Redis cannot be reached; callers answer 503 or degraded defaults."""


class ServiceStartError(FeatureStoreError, RuntimeError):
    """A local service (Redis, the Kafka broker) failed to start."""


class OfflineStoreError(FeatureStoreError, ValueError):
    """The offline store cannot answer: entity rows lack a column, files are unreadable, a time is invalid."""


class ApprovalError(FeatureStoreError, PermissionError):
    """A promotion request breaks the four-eyes rule or is not pending; the message says who must act."""


class BrokerUnavailable(FeatureStoreError, ConnectionError):
    """Kafka cannot be reached (or refused the events) within the retry budget; nothing was half-sent."""
