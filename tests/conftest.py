"""Fixtures for every test: real services and per-test isolation (see tests/fixtures/services.py)."""

from __future__ import annotations

import pytest

from tests.fixtures.redis_cluster import redis_cluster_url  # noqa: F401 - re-exported as a fixture
from tests.fixtures.services import (  # noqa: F401 - re-exported as fixtures
    SERVICE_FIXTURES,
    _session_services,
    hermetic_env,
    kafka_bootstrap,
    kafka_settings,
    local_stack,
    private_redis,
    redis_client,
    redis_db_url,
    redis_url,
    service_origin,
    settings,
    unique,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real service as `integration` (`-m "not integration"` deselects them)."""
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
