"""Property-based API tests: schemathesis generates requests from the app's OpenAPI schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from feastkit.settings import Settings
from serving.app import ServingState, create_app
from tests.conftest import Deployment
from tests.integration.serving_support import private_copy

pytestmark = pytest.mark.integration

API_KEY = "fk-schema-test-5b7d"
POSITIVE_CASES = 500   # schema-valid requests per route
NEGATIVE_CASES = 50    # schema-violating requests per route that takes input
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _routes(with_input: bool = False) -> list[tuple[str, str]]:
    """(method, path) pairs of the schema (which does not depend on loaded state)."""
    spec = create_app(Settings()).openapi()
    return [(method.upper(), path) for path, item in spec["paths"].items()
            for method, op in item.items()
            if not with_input or op.get("parameters") or op.get("requestBody")]


def _run(api_schema, method: str, path: str, mode: GenerationMode, cases: int) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=cases, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call(headers={"X-API-Key": API_KEY})
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        case.validate_response(response, checks=CHECKS)

    check()


@pytest.fixture(scope="module")
def api_schema(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory):
    """The schema of an app over a private copy (generated pushes never reach shared stores)."""
    app_settings = private_copy(deployment, tmp_path_factory.mktemp("schema-copy"),
                                api_keys=API_KEY, max_batch_size=20, access_log=False)
    app = create_app(app_settings, ServingState.load(app_settings))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("method, path", _routes())
def test_valid_requests_never_fail_and_match_the_schema(api_schema, method: str, path: str) -> None:
    _run(api_schema, method, path, GenerationMode.POSITIVE, POSITIVE_CASES)


@pytest.mark.parametrize("method, path", _routes(with_input=True))
def test_invalid_requests_never_fail_and_match_the_schema(api_schema, method: str,
                                                          path: str) -> None:
    _run(api_schema, method, path, GenerationMode.NEGATIVE, NEGATIVE_CASES)
