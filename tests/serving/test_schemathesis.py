"""Property test over the OpenAPI schema: no generated request gets a 5xx.

schemathesis generates requests for every operation (bounded examples) and
sends them in-process to one app whose lifespan runs once, with real Redis
and the real broker behind it, and an admin key so write paths are reached.
"""

from __future__ import annotations

import contextlib

import pytest
import schemathesis

# Imported here, at collection, not lazily inside the test: pytest rewrites (ast.parse) the modules of
# plugin packages on first import, and CPython 3.11.7 can fail that parse with "AST constructor
# recursion depth mismatch" once earlier hypothesis tests have moved the recursion limit (gh-106905).
import schemathesis.specs.openapi.schemas
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from schemathesis.python.asgi import ASGIClient

from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from serving import ServingConfig, create_app
from tests.serving.conftest import ADMIN

pytestmark = pytest.mark.integration

EXAMPLES = 25
KNOWN = {"name": "m", "model": "m", "source": "clicks", "version": 1}


def _aim(case: Case, entity: bool) -> None:
    """Point half the cases at things that exist, so deeper paths than 404 are reached."""
    if case.path_parameters:
        for key in case.path_parameters:
            if key in KNOWN:
                case.path_parameters[key] = KNOWN[key]
    if isinstance(case.body, dict):
        if case.operation.path == "/v1/features":
            case.body.pop("features", None)
            case.body["service"] = "svc"
        if entity and "entities" in case.body:
            case.body["entities"] = [{"user_id": "u1"}]


def test_no_server_errors(serving_settings: Settings, repo: FeatureRepo, config: ServingConfig,
                          kafka_bootstrap: str) -> None:
    app_settings = serving_settings.model_copy(update={"kafka": kafka_bootstrap,
                                                       "admin_keys": {"ops": SecretStr(ADMIN)}})
    app = create_app(app_settings, repo, config=config)
    app.state.serving.models.register("m", "amount * 2", flavor="rule", feature_service="svc", fallback="0")
    app.state.serving.models.promote("m", 1, "production")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # /v1/dashboard belongs to the dashboard (tests/serving/test_ui.py); here it once hung inside duckdb.connect
    operations = [op for op in (result.ok() for result in schema.get_all_operations()) if op.path != "/v1/dashboard"]
    assert len(operations) >= 10
    failures: list[str] = []
    with ASGIClient(app) as client:
        for operation in operations:

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(), known=st.booleans(), entity=st.booleans())
            def run(case: Case, known: bool, entity: bool) -> None:
                if known:
                    _aim(case, entity)
                response = case.call(session=client, headers={"X-API-Key": ADMIN})
                try:
                    case.validate_response(response, checks=[not_a_server_error])
                except Exception as exc:
                    failures.append(f"{case.method} {case.formatted_path}: {response.status_code} "
                                    f"{response.text[:200]} ({type(exc).__name__})")
                    raise

            with contextlib.suppress(Exception):  # collected above; report all operations at once
                run()
    assert not failures, "\n".join(failures[:10])
