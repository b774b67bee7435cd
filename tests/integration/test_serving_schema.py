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

from monitoring.freshness import check_freshness
from serving.app import ServingState, create_app
from tests.conftest import Deployment
from tests.integration.serving_support import private_copy

pytestmark = pytest.mark.integration

API_KEY = "fk-schema-test-5b7d"
POSITIVE_CASES = 500   # schema-valid requests per route
NEGATIVE_CASES = 50    # schema-violating requests per route that takes input
AUTH_CASES = 25        # schema-valid requests per protected route, without a key and with a wrong one
OPEN = {"/health", "/ready"}  # the only routes served without a key when keys are configured
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


# The predict routes are generated per served feature service, so the schema depends on the
# deployment, which does not exist at collection time: the routes are listed here, and
# test_every_route_is_exercised checks the list against the app's real schema.
# (method, path, takes input)
FIXED_ROUTES = [("GET", "/health", False), ("GET", "/ready", False), ("GET", "/metrics", False),
                ("POST", "/v1/predict/fraud", True), ("POST", "/v1/predict/fraud:batch", True),
                ("POST", "/v1/predict/churn", True), ("POST", "/v1/predict/churn:batch", True),
                ("POST", "/v1/push/user_realtime_push", True), ("GET", "/v1/monitoring/drift/latest", False),
                ("GET", "/v1/monitoring/freshness", True)]
SERVED = ("fraud_detection_v1", "fraud_detection_v2", "churn_prediction_v1")  # the deployment trains all
ROUTES = FIXED_ROUTES + [("POST", f"/v1/predict/{service}{suffix}", True)
                         for service in SERVED for suffix in ("", ":batch")]


def _routes(with_input: bool = False) -> list[tuple[str, str]]:
    """(method, path) pairs of the schema."""
    return [(method, path) for method, path, takes_input in ROUTES if takes_input or not with_input]


def _run(api_schema, method: str, path: str, mode: GenerationMode, cases: int,
         key: str | None = API_KEY) -> list[int]:
    """Generated requests with `key` (None: no key at all); the status codes they got."""
    operation = api_schema[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=cases, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        if case.headers:  # only the key given here, never one the generator made up
            for name in [h for h in case.headers if h.lower() in ("x-api-key", "authorization")]:
                del case.headers[name]
        response = case.call(headers={"X-API-Key": key} if key is not None else None)
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        case.validate_response(response, checks=CHECKS)
        statuses.append(response.status_code)

    check()
    return statuses


@pytest.fixture(scope="module")
def api_schema(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory):
    """The schema of an app over a private copy (generated pushes never reach shared stores)."""
    app_settings = private_copy(deployment, tmp_path_factory.mktemp("schema-copy"),
                                api_keys=API_KEY, max_batch_size=20, access_log=False)
    app = create_app(app_settings, ServingState.load(app_settings), freshness=check_freshness)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers={"X-API-Key": API_KEY})


def test_every_route_is_exercised(api_schema) -> None:
    spec = api_schema.raw_schema
    actual = {(method.upper(), path, bool(op.get("parameters") or op.get("requestBody")))
              for path, item in spec["paths"].items() for method, op in item.items()}
    assert actual == set(ROUTES)


@pytest.mark.parametrize("method, path", _routes())
def test_valid_requests_never_fail_and_match_the_schema(api_schema, method: str, path: str) -> None:
    statuses = _run(api_schema, method, path, GenerationMode.POSITIVE, POSITIVE_CASES)
    if path.startswith("/v1/push/"):  # the push body is typed from the source: writes happen
        assert statuses.count(200) >= POSITIVE_CASES // 10, sorted(set(statuses))


@pytest.mark.parametrize("key", [None, API_KEY + "-wrong"], ids=["no key", "wrong key"])
@pytest.mark.parametrize("method, path", [r for r in _routes() if r[1] not in OPEN])
def test_requests_without_a_valid_key_are_refused(api_schema, method: str, path: str,
                                                  key: str | None) -> None:
    statuses = _run(api_schema, method, path, GenerationMode.POSITIVE, AUTH_CASES, key=key)
    assert set(statuses) == {401}, sorted(set(statuses))


@pytest.mark.parametrize("method, path", _routes(with_input=True))
def test_invalid_requests_never_fail_and_match_the_schema(api_schema, method: str,
                                                          path: str) -> None:
    _run(api_schema, method, path, GenerationMode.NEGATIVE, NEGATIVE_CASES)
