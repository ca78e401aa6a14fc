"""The one typed settings object, read from `FEATURESTREAM_*` env vars.

Built once at start (`get_settings()`), then passed in; nothing here reads the
environment at import time. Unknown `FEATURESTREAM_*` variables are errors, so a
typo never silently falls back to a default. `FEATURESTREAM_TEST_*` is reserved
for the test suite and ignored here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from feature_store.errors import ConfigError
from feature_store.logging import redact_text

__all__ = ["ENV_PREFIX", "Settings", "get_settings", "load_settings"]

ENV_PREFIX = "FEATURESTREAM_"
_RESERVED_PREFIX = ENV_PREFIX + "TEST_"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Everything a featurestream process needs to know about its environment.

    Each field `x` is read from `FEATURESTREAM_X`; dict fields take JSON
    (`FEATURESTREAM_API_KEYS='{"app": "s3cret"}'`).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    kafka: str | None = Field(
        default=None,
        description="Kafka bootstrap servers `host:port[,host:port]`; unset: `up` starts Tansu.",
    )
    redis: str | None = Field(
        default=None,
        description="Redis URL `redis://[:password@]host:port/db`; unset: `up` starts redis-server.",
    )
    redis_cluster: bool = Field(
        default=False,
        description="FEATURESTREAM_REDIS names a node of a Redis Cluster (db 0): commands go to the nodes owning "
                    "their keys.",
    )
    kafka_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the local broker `up` starts (free one when unset)."
    )
    redis_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the local redis-server `up` starts (free one when unset)."
    )
    data_dir: Path = Field(
        default=Path(".featurestream/data"),
        description="Offline store root: event log and feature tables (Parquet).",
    )
    registry: Path = Field(
        default=Path(".featurestream/registry.db"),
        description="Registry location (format owned by the registry).",
    )
    api_keys: dict[str, SecretStr] = Field(default_factory=dict, description="Write API keys as JSON `{name: secret}`.")
    admin_keys: dict[str, SecretStr] = Field(
        default_factory=dict, description="Admin API keys as JSON `{name: secret}`."
    )
    kafka_session_timeout_s: float = Field(
        default=6.0, gt=0, description="Consumer group session timeout (Tansu joins in ~half of it)."
    )
    kafka_heartbeat_s: float = Field(default=1.0, gt=0, description="Consumer group heartbeat interval.")
    partitions: int = Field(default=4, ge=1, description="Partitions for topics we create.")
    online_prefix: str = Field(
        default="fs", pattern=r"^[A-Za-z0-9_.-]+$",
        description="Redis key prefix of the online store (isolates deployments).",
    )
    worker_group: str = Field(default="featurestream-worker", description="Consumer group the stream workers share.")
    worker_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of a stream worker's Prometheus /metrics (unset: none)."
    )
    log_level: LogLevel = Field(default="INFO", description="Lowest level logged.")
    log_json: bool = Field(default=False, description="JSON log lines instead of console output.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a URL like redis://host:6379/0 (or rediss://, unix://)")
        return value

    @field_validator("kafka")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port (comma-separated for several)")
        return value

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        if self.kafka_heartbeat_s >= self.kafka_session_timeout_s:
            raise ValueError("kafka_heartbeat_s must be shorter than kafka_session_timeout_s")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Hide URL passwords; SecretStr fields already print as '**********'."""
        for name, value in super().__repr_args__():
            yield name, redact_text(value) if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _UnknownEnvSource(settings_cls))


class _UnknownEnvSource(PydanticBaseSettingsSource):
    """Feeds unknown `FEATURESTREAM_*` env vars to validation so `extra="forbid"` rejects them.

    pydantic-settings ignores env vars that match no field; we want a typo to fail.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        known = {name.upper() for name in self.settings_cls.model_fields}
        unknown: dict[str, Any] = {}
        for var, value in os.environ.items():
            upper = var.upper()
            if not upper.startswith(ENV_PREFIX) or upper.startswith(_RESERVED_PREFIX):
                continue
            name = upper.removeprefix(ENV_PREFIX)
            if name not in known:
                unknown[name.lower()] = value
        return unknown


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus `overrides`; errors become one `ConfigError` line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use (never at import)."""
    return load_settings()


def _one_line(exc: ValidationError) -> str:
    known = ", ".join(ENV_PREFIX + name.upper() for name in Settings.model_fields)
    problems: list[str] = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        var = ENV_PREFIX + field.upper() if field else "settings"
        if error["type"] == "extra_forbidden":
            problems.append(f"{var} is not a setting (known: {known})")
        else:
            problems.append(f"{var}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)
